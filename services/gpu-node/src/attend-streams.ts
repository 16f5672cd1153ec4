/**
 * Long-lived Attend streams from a gpu-node to attention nodes (memory- and
 * storage-nodes): one bidirectional stream per node address, created on first
 * use. The Attention service answers each AttendRequest once, in request
 * order, so a FIFO of pending replies pairs responses with requests by step
 * id and layer. A stream that fails (error, end, a reply that does not match,
 * a timeout) fails every pending request with an {@link AttentionNodeError}
 * and is dropped; the next request to that address opens a new one on a
 * fresh channel, so a coordinator can retry a step at once when the node is
 * back. A stream the node ends (a drain: status OK) or cancels (a forced
 * shutdown: CANCELLED) fails with UNAVAILABLE: the node went away. The
 * stream machinery is paired-streams.ts.
 */
import {
  Attention,
  NodeErrorReason,
  RpcError,
  createClient,
  type AttendRequest,
  type AttendRequestSchema,
  type AttendResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { PairedStreams, type StreamFailure } from "./paired-streams.js";
import { reasonOfCode } from "./step-error.js";

/**
 * An attention node failed a request: gRPC `code`, the node's `address`,
 * and `reason` (NodeErrorReason: by default from the code, e.g. UNREACHABLE
 * for UNAVAILABLE or DEADLINE_EXCEEDED; CANCELLED when this gpu-node is
 * closing). The message reads "attention node <address>: <CODE>: <detail>".
 */
export class AttentionNodeError extends Error {
  override name = "AttentionNodeError";
  /** What the caller should do about it. */
  readonly reason: NodeErrorReason;
  constructor(
    readonly code: number,
    readonly address: string,
    detail: string,
    options?: { cause?: unknown; reason?: NodeErrorReason },
  ) {
    super(`attention node ${address}: ${RpcError.codeName(code)}: ${detail}`, options);
    this.reason = options?.reason ?? reasonOfCode(code);
  }
}

/** An AttendRequest as sent: step id and layer are required to pair the reply. */
type AttendStreamRequest = MessageInitShape<typeof AttendRequestSchema> & Pick<AttendRequest, "stepId" | "layer">;

/** What pairs a reply with its request. */
interface AttendId {
  stepId: bigint;
  layer: number;
}

/** The error a request to `address` fails with: CANCELLED when this gpu-node is closing, else by its code. */
function attentionNodeError(address: string, f: StreamFailure): AttentionNodeError {
  if (f.kind === "closing")
    return new AttentionNodeError(f.code, address, f.detail, { reason: NodeErrorReason.CANCELLED });
  return new AttentionNodeError(f.code, address, f.detail, f.kind === "rpc" ? { cause: f.cause } : undefined);
}

/**
 * The Attend streams of one gpu-node, by attention node address.
 * `attend` is safe to call from concurrent steps: writes and the FIFO entry
 * happen together, and the node answers in order. `size` and `close()`
 * (fails pending requests with AttentionNodeError UNAVAILABLE "gpu-node is
 * closing" and cancels every stream; idempotent) come from PairedStreams.
 */
export class AttendStreams extends PairedStreams<AttendStreamRequest, AttendResponse, AttendId> {
  /** @param timeoutMs how long one request may wait for its response before its stream is failed. */
  constructor(timeoutMs: number) {
    super({
      method: "Attend",
      timeoutMs,
      open: (address, channelOptions) => {
        const client = createClient(Attention, address, channelOptions);
        return { call: client.attend(), closeChannel: () => client.close() };
      },
      id: (req) => ({ stepId: req.stepId, layer: req.layer }),
      mismatch: (p, r) =>
        r.stepId === p.stepId && r.layer === p.layer
          ? undefined
          : `Attend response for step ${r.stepId} layer ${r.layer} where step ${p.stepId} layer ${p.layer} was expected`,
      error: attentionNodeError,
    });
  }

  /**
   * Sends one AttendRequest to the node at `address`.
   * @throws AttentionNodeError (rejects) when the node is unreachable, the
   *   stream breaks or times out, or this is closed (UNAVAILABLE "gpu-node
   *   is closing"). A per-request `error` in the response is returned, not
   *   thrown.
   */
  attend(address: string, req: AttendStreamRequest): Promise<AttendResponse> {
    return this.send(address, req);
  }
}
