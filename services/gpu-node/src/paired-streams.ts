/**
 * Long-lived bidirectional gRPC streams, one per peer address, whose replies
 * are paired with requests in order: the machinery shared by a gpu-node's
 * Attend streams to attention nodes (attend-streams.ts) and its Forward
 * streams to the next pipeline stages (downstream.ts).
 *
 * - One stream per address, opened on first use on a channel of its own
 *   (a local subchannel pool, {@link STREAM_CHANNEL_OPTIONS}), so a stream
 *   opened after a failure gets a fresh connection instead of waiting out the
 *   shared subchannel's reconnect backoff.
 * - The peer answers each request once, in request order, so a FIFO of
 *   pending requests pairs each response with the request at its head; a
 *   request's pairing id (not the request, whose tensors may be large) is
 *   kept until its reply.
 * - Each request has a timeout. A stream that breaks (an error, an end, a
 *   reply without a request or for another request, a timeout) fails every
 *   pending request and is dropped; the next request to that address opens a
 *   new stream, so a coordinator can retry a step at once when the peer is
 *   back.
 * - Our own cancel() comes only after a stream is failed, so a CANCELLED
 *   status is the peer's forced shutdown: it went away (it may be restarting)
 *   and the failure is UNAVAILABLE, which a coordinator retries; CANCELLED
 *   would read as the caller's own cancellation, which is final. A stream the
 *   peer ends (a drain: status OK) also fails UNAVAILABLE.
 *
 * Every failure is described by a {@link StreamFailure} (gRPC code and a
 * detail text); the user's `error` callback turns it into the error its
 * callers see, so each user keeps its own error class and messages.
 */
import { Code, RpcError, type ClientDuplexStream } from "@tessera/proto";

/**
 * Channel options of every paired stream's channel: a local subchannel pool,
 * i.e. a fresh connection per stream (see the module comment).
 */
export const STREAM_CHANNEL_OPTIONS = { "grpc.use_local_subchannel_pool": 1 } as const;

/** An opened stream: the bidirectional call and how to close its channel. */
export interface OpenedStream<Req, Res> {
  call: ClientDuplexStream<Req, Res>;
  /** Closes the channel the call runs on (idempotent). */
  closeChannel(): void;
}

/**
 * Why a request failed, handed to {@link PairedStreamsOptions.error}: a gRPC
 * `code` and a `detail` naming the method but not the peer (the error
 * callback adds the address in its own words).
 * - `rpc`: the stream failed with a gRPC status (`code` is UNAVAILABLE where
 *   the peer cancelled it; `cause` is the grpc-js error). `detail` is the
 *   status message, or "<method> stream cancelled by the node (<message>)".
 * - `ended`: the peer ended the stream (UNAVAILABLE).
 * - `broken`: a request was sent on a stream already failed (UNAVAILABLE).
 * - `timeout`: no response within the timeout (DEADLINE_EXCEEDED).
 * - `unrequested`: a response arrived with no request pending (INTERNAL).
 * - `mismatch`: the response does not answer the request at the head of the
 *   queue (INTERNAL); `detail` is what {@link PairedStreamsOptions.mismatch} said.
 * - `closing`: the {@link PairedStreams} was closed (UNAVAILABLE, "gpu-node is closing").
 */
export type StreamFailure =
  | { kind: "rpc"; code: number; detail: string; cause: unknown }
  | { kind: "ended" | "broken" | "timeout" | "unrequested" | "mismatch" | "closing"; code: number; detail: string };

/** How a {@link PairedStreams} talks to its peers and reports failures. */
export interface PairedStreamsOptions<Req, Res, Id> {
  /** The RPC method's name in messages ("Attend", "Forward"). */
  method: string;
  /** How long one request may wait for its response before its stream is failed (ms). */
  timeoutMs: number;
  /**
   * Opens the bidirectional call to `address` on a new channel created with
   * `channelOptions` (pass them to createClient).
   */
  open(address: string, channelOptions: typeof STREAM_CHANNEL_OPTIONS): OpenedStream<Req, Res>;
  /** The pairing id of `req` (e.g. its step id), kept while it is pending. */
  id(req: Req): Id;
  /**
   * Whether `res` answers the pending request with `id`: undefined when it
   * does, else the detail of the failure ("Forward response for step 2
   * where step 1 was expected").
   */
  mismatch(id: Id, res: Res): string | undefined;
  /** Names a request in a timeout's detail ("step 3"); omitted, the detail names none. */
  describe?(id: Id): string;
  /** The error the request to `address` is rejected with. */
  error(address: string, failure: StreamFailure): Error;
  /**
   * On {@link PairedStreams.close}, half-close the streams (the peer ends
   * them with OK after the requests it is running) instead of cancelling them.
   */
  halfCloseOnClose?: boolean;
}

/** Bound on waiting for the peer to end a half-closed stream before its channel is closed anyway (ms). */
const HALF_CLOSE_BOUND_MS = 5_000;

interface Pending<Res, Id> {
  id: Id;
  resolve(r: Res): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** One stream to one peer. */
class PairedStream<Req, Res, Id> {
  private readonly opened: OpenedStream<Req, Res>;
  private readonly pending: Pending<Res, Id>[] = [];
  broken = false;

  constructor(
    readonly address: string,
    private readonly opts: PairedStreamsOptions<Req, Res, Id>,
    private readonly onBroken: (s: PairedStream<Req, Res, Id>) => void,
  ) {
    const { method } = opts;
    this.opened = opts.open(address, STREAM_CHANNEL_OPTIONS);
    const { call } = this.opened;
    call.on("data", (r: Res) => this.onResponse(r));
    call.on("error", (err: unknown) => {
      const e = RpcError.from(err);
      // See the module comment: CANCELLED here is the peer's doing.
      const cancelled = e.code === Code.CANCELLED;
      this.fail({
        kind: "rpc",
        code: cancelled ? Code.UNAVAILABLE : e.code,
        detail: cancelled ? `${method} stream cancelled by the node (${e.message})` : e.message,
        cause: err,
      });
    });
    call.on("end", () =>
      this.fail({ kind: "ended", code: Code.UNAVAILABLE, detail: `${method} stream ended by the node` }),
    );
  }

  /** Sends `req`; resolves with its response, rejects with the options' error. */
  send(req: Req): Promise<Res> {
    const { method, timeoutMs } = this.opts;
    if (this.broken) {
      const detail = `${method} stream is closed`;
      return Promise.reject(this.opts.error(this.address, { kind: "broken", code: Code.UNAVAILABLE, detail }));
    }
    const id = this.opts.id(req);
    return new Promise<Res>((resolve, reject) => {
      const timer = setTimeout(() => {
        const to = this.opts.describe ? ` to ${this.opts.describe(id)}` : "";
        const detail = `no ${method} response${to} within ${timeoutMs} ms`;
        this.fail({ kind: "timeout", code: Code.DEADLINE_EXCEEDED, detail });
      }, timeoutMs);
      this.pending.push({ id, resolve, reject, timer });
      this.opened.call.write(req);
    });
  }

  /**
   * Fails pending requests with `failure` (or `err`, already built) and drops
   * the stream: cancelled, or with `halfClose` half-closed (the peer ends it
   * with OK after the requests it is running). Idempotent.
   */
  fail(failure: StreamFailure | Error, halfClose = false): void {
    if (this.broken) return;
    this.broken = true;
    this.onBroken(this);
    const err = failure instanceof Error ? failure : this.opts.error(this.address, failure);
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    const { call, closeChannel } = this.opened;
    if (!halfClose) {
      call.cancel();
      closeChannel();
      return;
    }
    // The channel is closed once the peer has ended the stream (or after a
    // bound, should it never answer).
    const done = () => {
      clearTimeout(bound);
      closeChannel();
    };
    const bound = setTimeout(done, HALF_CLOSE_BOUND_MS).unref();
    call.on("error", () => undefined);
    call.on("status", done);
    call.end();
  }

  private onResponse(r: Res): void {
    const p = this.pending.shift();
    if (!p) {
      const detail = `${this.opts.method} response without a request`;
      this.fail({ kind: "unrequested", code: Code.INTERNAL, detail });
      return;
    }
    clearTimeout(p.timer);
    const mismatch = this.opts.mismatch(p.id, r);
    if (mismatch !== undefined) {
      const err = this.opts.error(this.address, { kind: "mismatch", code: Code.INTERNAL, detail: mismatch });
      p.reject(err);
      this.fail(err);
      return;
    }
    p.resolve(r);
  }
}

/**
 * Paired streams of one gpu-node to its peers of one kind, by address.
 * `send` is safe to call from concurrent steps: the write and the FIFO entry
 * happen together, and the peer answers in order.
 */
export class PairedStreams<Req, Res, Id> {
  private readonly streams = new Map<string, PairedStream<Req, Res, Id>>();
  private closed = false;

  constructor(private readonly opts: PairedStreamsOptions<Req, Res, Id>) {}

  /**
   * Sends `req` to the peer at `address` on its stream, opening one if there
   * is none. The request is serialised as given (no copy is made here).
   * @returns the response (a per-request error it carries is returned, not thrown).
   * @throws (rejects) the options' error for a {@link StreamFailure}: the
   *   peer is unreachable, the stream breaks or times out, or this was closed.
   */
  send(address: string, req: Req): Promise<Res> {
    if (this.closed) return Promise.reject(this.closingError(address));
    let s = this.streams.get(address);
    if (!s) {
      s = new PairedStream(address, this.opts, (broken) => {
        if (this.streams.get(broken.address) === broken) this.streams.delete(broken.address);
      });
      this.streams.set(address, s);
    }
    return s.send(req);
  }

  /** Number of open streams (for tests and metrics). */
  get size(): number {
    return this.streams.size;
  }

  /**
   * Fails pending requests (`closing`: UNAVAILABLE) and cancels every stream,
   * or half-closes it with `halfCloseOnClose`. Later sends reject the same
   * way. Idempotent.
   */
  close(): void {
    this.closed = true;
    for (const s of [...this.streams.values()]) s.fail(this.closingError(s.address), this.opts.halfCloseOnClose);
  }

  private closingError(address: string): Error {
    return this.opts.error(address, { kind: "closing", code: Code.UNAVAILABLE, detail: "gpu-node is closing" });
  }
}
