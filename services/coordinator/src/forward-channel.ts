import {
  Code,
  GpuNode,
  RpcError,
  type Client,
  type ClientDuplexStream,
  type ForwardRequest,
  type ForwardResponse,
  type MessageInitShape,
  type ForwardRequestSchema,
} from "@tessera/proto";
import { NodeUnreachableError } from "@tessera/core";

/**
 * The coordinator's end of one gpu-node's `Forward` stream (the first
 * pipeline stage's; the stages pass each step on among themselves):
 * `step()` sends a request and resolves with its response (responses arrive
 * in request order). A broken stream rejects every pending step with
 * NodeUnreachableError("gpu", address) and is re-opened on the next step.
 */
export class ForwardChannel {
  private stream: ClientDuplexStream<MessageInitShape<typeof ForwardRequestSchema>, ForwardResponse> | undefined;
  /** Steps sent and not answered yet, in request order (an abandoned one's answer is dropped). */
  private readonly pending: { resolve: (r: ForwardResponse) => void; reject: (e: Error) => void }[] = [];

  constructor(readonly client: Client<typeof GpuNode>) {}

  get address(): string {
    return this.client.address;
  }

  /**
   * Sends one step; resolves with its response (which may carry a per-step
   * `error`). When `signal` aborts first the step is abandoned: the promise
   * rejects at once with RpcError CANCELLED and the step's answer, when it
   * comes, is dropped (answers arrive in order, so its place in the queue
   * stays).
   * @throws NodeUnreachableError when the stream breaks; RpcError CANCELLED
   *   when `signal` aborts or the channel is closed.
   */
  step(
    request: MessageInitShape<typeof ForwardRequestSchema> & Pick<ForwardRequest, "stepId">,
    signal?: AbortSignal,
  ): Promise<ForwardResponse> {
    if (signal?.aborted) return Promise.reject(new RpcError(Code.CANCELLED, "step cancelled"));
    const stream = this.open();
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        entry.resolve = () => undefined;
        entry.reject = () => undefined;
        reject(new RpcError(Code.CANCELLED, "step cancelled"));
      };
      const done = () => signal?.removeEventListener("abort", onAbort);
      const entry = {
        resolve: (r: ForwardResponse) => (done(), resolve(r)),
        reject: (e: Error) => (done(), reject(e)),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.push(entry);
      stream.write(request);
    });
  }

  private open() {
    if (this.stream) return this.stream;
    const stream = this.client.forward();
    this.stream = stream;
    stream.on("data", (res: ForwardResponse) => {
      // A late answer on a stream already given up belongs to no pending step.
      if (this.stream !== stream) return;
      const p = this.pending.shift();
      if (p) p.resolve(res);
    });
    const fail = (err: Error) => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      const e = new NodeUnreachableError("gpu", this.address, { cause: RpcError.from(err) });
      for (const p of this.pending.splice(0)) p.reject(e);
    };
    stream.on("error", fail);
    stream.on("end", () => fail(new RpcError(Code.UNAVAILABLE, "Forward stream ended")));
    return stream;
  }

  /** Ends the stream; pending steps are rejected. Idempotent. */
  close(): void {
    const s = this.stream;
    this.stream = undefined;
    for (const p of this.pending.splice(0)) p.reject(new RpcError(Code.CANCELLED, "Forward channel closed"));
    s?.end();
  }
}
