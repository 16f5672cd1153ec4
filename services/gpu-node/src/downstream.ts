/**
 * Long-lived Forward streams from a gpu-node to the pipeline stages after it
 * (ForwardRequest.next_stages): a stage that has run its layer range sends
 * the step's hidden states [total_tokens, dim] straight to the next stage
 * instead of back to the coordinator, so they cross the network once per
 * stage boundary (GPipe / PipeDream-style pipeline parallelism, Huang et al.
 * 2019, Narayanan et al. 2019; here one step at a time).
 *
 * One bidirectional stream per downstream address, opened on first use on a
 * channel of its own. The GpuNode service answers each ForwardRequest once,
 * in request order, so a FIFO of pending replies pairs responses with
 * requests by step id. A stream that fails (error, end, a reply that does
 * not match, a timeout) fails every pending request with a
 * {@link DownstreamError} naming the downstream gpu-node and is dropped; the
 * next request to that address opens a new one, so a coordinator can retry
 * the step at once when the node is back. A stream the node ends (a drain:
 * status OK) or cancels (a forced shutdown: CANCELLED) fails with
 * UNAVAILABLE: the node went away. The stream machinery is paired-streams.ts
 * (shared with attend-streams.ts).
 */
import {
  Code,
  GpuNode,
  RpcError,
  createClient,
  type ForwardRequest,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { PairedStreams, type StreamFailure } from "./paired-streams.js";

/**
 * A downstream gpu-node could not answer a step: gRPC `code` (UNAVAILABLE
 * when unreachable or gone, DEADLINE_EXCEEDED on a timeout, INTERNAL for a
 * reply out of order), the node's `address`. The message names the node;
 * an unreachable node reads as NodeUnreachableError's "gpu-node at <address>
 * is unreachable: ...".
 */
export class DownstreamError extends Error {
  override name = "DownstreamError";
  constructor(
    readonly code: number,
    readonly address: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The node is unreachable or went away (UNAVAILABLE). */
  static unreachable(address: string, detail: string, cause?: unknown): DownstreamError {
    return new DownstreamError(Code.UNAVAILABLE, address, `gpu-node at ${address} is unreachable: ${detail}`, {
      cause,
    });
  }
}

/** A ForwardRequest as sent downstream: a step id is required to pair the reply. */
export type DownstreamRequest = MessageInitShape<typeof ForwardRequestSchema> & Pick<ForwardRequest, "stepId">;

/**
 * The error a step sent to `address` fails with: a plain RpcError once
 * {@link Downstreams.close}d (this node is closing, not the downstream one),
 * else a DownstreamError naming the downstream gpu-node.
 */
function downstreamError(address: string, f: StreamFailure): Error {
  if (f.kind === "closing") return new RpcError(f.code, f.detail);
  if (f.code === Code.UNAVAILABLE)
    return DownstreamError.unreachable(address, f.detail, f.kind === "rpc" ? f.cause : undefined);
  if (f.kind === "rpc") {
    const msg = `gpu-node ${address}: Forward stream failed: ${RpcError.codeName(f.code)}: ${f.detail}`;
    return new DownstreamError(f.code, address, msg, { cause: f.cause });
  }
  return new DownstreamError(f.code, address, `gpu-node ${address}: ${f.detail}`);
}

/**
 * The Forward streams of one gpu-node to downstream stages, by address.
 * `forward` is safe to call from concurrent steps: the write and the FIFO
 * entry happen together, and the node answers in order. `size` and
 * `close()` (fails pending requests with RpcError UNAVAILABLE: this gpu-node
 * is closing; half-closes every stream, so the downstream nodes end them
 * with OK; idempotent) come from PairedStreams.
 */
export class Downstreams extends PairedStreams<DownstreamRequest, ForwardResponse, bigint> {
  /**
   * @param timeoutMs how long one request may wait for its response (the
   *   downstream stages' whole step) before its stream is failed.
   */
  constructor(timeoutMs: number) {
    super({
      method: "Forward",
      timeoutMs,
      open: (address, channelOptions) => {
        const client = createClient(GpuNode, address, channelOptions);
        return { call: client.forward(), closeChannel: () => client.close() };
      },
      id: (req) => req.stepId,
      mismatch: (stepId, r) =>
        r.stepId === stepId ? undefined : `Forward response for step ${r.stepId} where step ${stepId} was expected`,
      describe: (stepId) => `step ${stepId}`,
      error: downstreamError,
      halfCloseOnClose: true,
    });
  }

  /**
   * Sends one ForwardRequest to the gpu-node at `address`. The request's
   * tensors are serialised as given (no copy is made here).
   * @returns the response, which may carry a per-step `error` (returned, not thrown).
   * @throws DownstreamError (rejects) when the node is unreachable, the
   *   stream breaks or times out; RpcError UNAVAILABLE once {@link close}d.
   */
  forward(address: string, req: DownstreamRequest): Promise<ForwardResponse> {
    return this.send(address, req);
  }
}
