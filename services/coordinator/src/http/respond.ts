/**
 * The answer of a completions or chat request, one JSON body or a stream
 * of server-sent events, in the endpoint's own shapes ({@link Shapes}):
 * streamed choices get their text token by token, each its finish reason,
 * then (with `stream_options.include_usage`) a last chunk of usage and no
 * choices, then `data: [DONE]`. A client that goes away cancels the run.
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import type { CoordinatorService } from "../coordinator.js";
import type { ServedModel } from "../served-models.js";
import { toOpenAiError } from "./errors.js";
import type { GenAiOperation } from "../engine/index.js";
import { generateChoices, type Choice, type Sampling, type Usage } from "./generation.js";
import { EventStream } from "./sse.js";

/** How an endpoint shapes its chunks and responses. */
export interface Shapes {
  /** A chunk: choice `index` with `text` and/or `finishReason`; `first` for a choice's first chunk. */
  chunk(index: number, text: string, finishReason: string | null, first: boolean): unknown;
  /** The last chunk's, with `usage` (stream_options.include_usage). */
  usageChunk(usage: Usage): unknown;
  /** The non-streaming response. */
  response(choices: Choice[], usage: Usage): unknown;
}

/** What one request runs. */
export interface GenerationPlan {
  served: ServedModel;
  /** gen_ai.operation.name of its trace spans: "chat" or "text_completion". */
  operation: GenAiOperation;
  prompts: string[];
  sampling: Sampling;
  stream: boolean;
  includeUsage: boolean;
  /** The body field the prompts came from ("prompt", "messages"), for errors. */
  param: string;
  /** Text each choice starts with (completions' `echo`), by prompt. */
  echo?: readonly string[] | undefined;
}

/** What the routes share: the coordinator, the in-flight runs to cancel at close, the log. */
export interface RouteContext {
  coordinator: CoordinatorService;
  inFlight: Set<AbortController>;
  log(line: string): void;
}

/** Runs `plan` and answers `reply` (JSON, or the event stream). */
export async function respond(
  ctx: RouteContext,
  req: FastifyRequest,
  reply: FastifyReply,
  plan: GenerationPlan,
  shapes: Shapes,
): Promise<unknown> {
  const abort = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableEnded) abort.abort();
  };
  reply.raw.on("close", onClose);
  ctx.inFlight.add(abort);
  const run = {
    served: plan.served,
    tenant: req.who.tenant,
    signal: abort.signal,
    param: plan.param,
    operation: plan.operation,
  };
  try {
    if (!plan.stream) {
      const { choices, usage } = await generateChoices(ctx.coordinator, run, plan.prompts, plan.sampling);
      const echo = plan.echo;
      if (echo) for (const c of choices) c.text = echo[Math.floor(c.index / plan.sampling.n)]! + c.text;
      return shapes.response(choices, usage);
    }
    const events = new EventStream(reply.raw);
    const started = new Set<number>();
    const send = (index: number, text: string, finish: string | null) => {
      const first = !started.has(index);
      started.add(index);
      const pre = first && plan.echo ? plan.echo[Math.floor(index / plan.sampling.n)]! : "";
      events.send(shapes.chunk(index, pre + text, finish, first));
    };
    reply.hijack();
    try {
      const { usage } = await generateChoices(ctx.coordinator, run, plan.prompts, plan.sampling, {
        delta: (index, text) => send(index, text, null),
        finished: (c) => send(c.index, "", c.finishReason),
      });
      if (plan.includeUsage) events.send(shapes.usageChunk(usage));
      events.done();
    } catch (err) {
      if (abort.signal.aborted && reply.raw.destroyed) return;
      const e = toOpenAiError(err, ctx.log);
      if (!events.isStarted) {
        // Nothing sent yet: the error body with its status, as without `stream`.
        reply.raw.writeHead(e.status, { "content-type": "application/json; charset=utf-8" });
        reply.raw.end(JSON.stringify(e.body()));
        return;
      }
      // Once streaming, an error is one last event (OpenAI's error body), no [DONE].
      events.send(e.body());
      events.end();
    }
    return undefined;
  } finally {
    reply.raw.off("close", onClose);
    ctx.inFlight.delete(abort);
  }
}
