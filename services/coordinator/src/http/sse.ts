/**
 * Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk,
 * `data: [DONE]\n\n` last. The headers go out with the first event, so an
 * error before any (a model that cannot load, no gpu-node) is still
 * answered as a plain error body with its status.
 */
import type { ServerResponse } from "node:http";

/** One streaming response. */
export class EventStream {
  private started = false;

  constructor(private readonly res: ServerResponse) {}

  /** Whether the headers (and at least one event) went out. */
  get isStarted(): boolean {
    return this.started;
  }

  /** Sends `chunk` as one event (JSON). */
  send(chunk: unknown): void {
    this.write(`data: ${JSON.stringify(chunk)}\n\n`);
  }

  /** Sends `data: [DONE]` and ends the response. */
  done(): void {
    this.write("data: [DONE]\n\n");
    this.res.end();
  }

  /** Ends the response without [DONE] (after an error event). */
  end(): void {
    if (!this.started) this.start();
    this.res.end();
  }

  private write(text: string): void {
    if (this.res.writableEnded || this.res.destroyed) return;
    if (!this.started) this.start();
    this.res.write(text);
  }

  private start(): void {
    this.started = true;
    this.res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    this.res.flushHeaders();
  }
}
