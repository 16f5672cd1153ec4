/**
 * Long-lived Attend streams from a gpu-node to attention nodes (memory- and
 * storage-nodes): one bidirectional stream per node address, created on first
 * use. The Attention service answers each AttendRequest once, in request
 * order, so a FIFO of pending replies pairs responses with requests. A stream
 * that fails (error, end, a reply that does not match, a timeout) fails every
 * pending request and is dropped; the next request to that address opens a
 * new one on a fresh channel, so a coordinator can retry a step at once when
 * the node is back. A stream the node ends (a drain: status OK) or cancels
 * (a forced shutdown: CANCELLED) fails with UNAVAILABLE: the node went away.
 */
import {
  Attention,
  Code,
  RpcError,
  createClient,
  type AttendRequest,
  type AttendResponse,
  type Client,
  type MessageInitShape,
} from "@tessera/proto";
import type { AttendRequestSchema } from "@tessera/proto";

/** An attention node failed a request: gRPC `code`, the node's `address`. */
export class AttentionNodeError extends Error {
  override name = "AttentionNodeError";
  constructor(
    readonly code: number,
    readonly address: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`attention node ${address}: ${RpcError.codeName(code)}: ${detail}`, options);
  }
}

interface Pending {
  stepId: bigint;
  layer: number;
  resolve(r: AttendResponse): void;
  reject(e: AttentionNodeError): void;
  timer: NodeJS.Timeout;
}

/** One Attend stream to one attention node. */
class AttendStream {
  private readonly client: Client<typeof Attention>;
  private readonly call: ReturnType<Client<typeof Attention>["attend"]>;
  private readonly pending: Pending[] = [];
  broken = false;

  constructor(
    readonly address: string,
    private readonly timeoutMs: number,
    private readonly onBroken: (s: AttendStream) => void,
  ) {
    // A local subchannel pool gives each stream a fresh connection, so one
    // that failed does not wait out the shared subchannel's reconnect backoff.
    this.client = createClient(Attention, address, { "grpc.use_local_subchannel_pool": 1 });
    this.call = this.client.attend();
    this.call.on("data", (r: AttendResponse) => this.onResponse(r));
    this.call.on("error", (err: unknown) => {
      const e = RpcError.from(err);
      // Our own cancel() happens only in fail(), after which this is a
      // no-op; so a CANCELLED here is the node's doing: a forced shutdown
      // resets its open streams. The node went away (it may be restarting),
      // so it is UNAVAILABLE, which a coordinator retries; CANCELLED would
      // read as the caller's own cancellation, which is final.
      const code = e.code === Code.CANCELLED ? Code.UNAVAILABLE : e.code;
      const detail = e.code === Code.CANCELLED ? `Attend stream cancelled by the node (${e.message})` : e.message;
      this.fail(new AttentionNodeError(code, address, detail, { cause: err }));
    });
    this.call.on("end", () =>
      this.fail(new AttentionNodeError(Code.UNAVAILABLE, address, "Attend stream ended by the node")),
    );
  }

  /** Sends `req`; resolves with its response, rejects {@link AttentionNodeError}. */
  attend(
    req: MessageInitShape<typeof AttendRequestSchema> & Pick<AttendRequest, "stepId" | "layer">,
  ): Promise<AttendResponse> {
    if (this.broken)
      return Promise.reject(new AttentionNodeError(Code.UNAVAILABLE, this.address, "Attend stream is closed"));
    return new Promise<AttendResponse>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          this.fail(
            new AttentionNodeError(
              Code.DEADLINE_EXCEEDED,
              this.address,
              `no Attend response within ${this.timeoutMs} ms`,
            ),
          ),
        this.timeoutMs,
      );
      this.pending.push({ stepId: req.stepId, layer: req.layer, resolve, reject, timer });
      this.call.write(req);
    });
  }

  /** Fails pending requests and closes the stream and its channel. */
  fail(err: AttentionNodeError): void {
    if (this.broken) return;
    this.broken = true;
    this.onBroken(this);
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.call.cancel();
    this.client.close();
  }

  private onResponse(r: AttendResponse): void {
    const p = this.pending.shift();
    if (!p) {
      this.fail(new AttentionNodeError(Code.INTERNAL, this.address, "Attend response without a request"));
      return;
    }
    clearTimeout(p.timer);
    if (r.stepId !== p.stepId || r.layer !== p.layer) {
      const err = new AttentionNodeError(
        Code.INTERNAL,
        this.address,
        `Attend response for step ${r.stepId} layer ${r.layer} where step ${p.stepId} layer ${p.layer} was expected`,
      );
      p.reject(err);
      this.fail(err);
      return;
    }
    p.resolve(r);
  }
}

/**
 * The Attend streams of one gpu-node, by attention node address.
 * `attend` is safe to call from concurrent steps: writes and the FIFO entry
 * happen together, and the node answers in order.
 */
export class AttendStreams {
  private readonly streams = new Map<string, AttendStream>();
  private closed = false;

  /** @param timeoutMs how long one request may wait for its response before its stream is failed. */
  constructor(private readonly timeoutMs: number) {}

  /**
   * Sends one AttendRequest to the node at `address`.
   * @throws AttentionNodeError (rejects) when the node is unreachable, the
   *   stream breaks or times out. A per-request `error` in the response is
   *   returned, not thrown.
   */
  attend(
    address: string,
    req: MessageInitShape<typeof AttendRequestSchema> & Pick<AttendRequest, "stepId" | "layer">,
  ): Promise<AttendResponse> {
    if (this.closed) return Promise.reject(new AttentionNodeError(Code.UNAVAILABLE, address, "gpu-node is closing"));
    let s = this.streams.get(address);
    if (!s) {
      s = new AttendStream(address, this.timeoutMs, (broken) => {
        if (this.streams.get(broken.address) === broken) this.streams.delete(broken.address);
      });
      this.streams.set(address, s);
    }
    return s.attend(req);
  }

  /** Number of open streams (for tests and metrics). */
  get size(): number {
    return this.streams.size;
  }

  /** Fails pending requests (UNAVAILABLE) and closes every stream. Idempotent. */
  close(): void {
    this.closed = true;
    for (const s of [...this.streams.values()])
      s.fail(new AttentionNodeError(Code.UNAVAILABLE, s.address, "gpu-node is closing"));
  }
}
