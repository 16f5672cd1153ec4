/**
 * The one place where protobuf-es service descriptors meet grpc-js: turns a
 * generated `GenService` into a grpc-js `ServiceDefinition`, registers typed
 * implementations on a server, and builds typed clients. No per-method glue
 * is written anywhere else.
 */
import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  TraceFlags,
  trace,
  type Context,
  type TextMapGetter,
} from "@opentelemetry/api";
import { Code, RpcError } from "./rpc-error.js";
import { endSpanWhen } from "./span-outcome.js";
import { channelCredentials, transportSecurity, type TransportSecurity } from "./transport.js";

type AnyGen = GenService<GenServiceMethods>;
type MethodsOf<S> = S extends GenService<infer M> ? M : never;
type In<M> = M extends { input: infer I extends DescMessage } ? I : never;
type Out<M> = M extends { output: infer O extends DescMessage } ? O : never;

/**
 * A grpc-js ServiceDefinition for a protobuf-es service: paths
 * `/package.Service/Method`, binary protobuf (de)serialisers. Responses may
 * be written as init objects; they are completed with `create` first.
 */
export function serviceDefinition(service: DescService): grpc.ServiceDefinition {
  return definitionOf(service, (m, buf) => fromBinary(m.input, buf));
}

function definitionOf(
  service: DescService,
  decodeRequest: (m: DescMethod, buf: Buffer) => unknown,
): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    def[method.localName] = methodDefinition(service, method, decodeRequest);
  }
  return def as grpc.ServiceDefinition;
}

function methodDefinition(
  service: DescService,
  m: DescMethod,
  decodeRequest: (m: DescMethod, buf: Buffer) => unknown,
): grpc.MethodDefinition<unknown, unknown> {
  const bidiOrClient = m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming";
  const bidiOrServer = m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming";
  return {
    path: `/${service.typeName}/${m.name}`,
    originalName: m.name,
    requestStream: bidiOrClient,
    responseStream: bidiOrServer,
    requestSerialize: (msg) => serialize(m.input, msg),
    requestDeserialize: (buf: Buffer) => decodeRequest(m, buf),
    responseSerialize: (msg) => serialize(m.output, msg),
    responseDeserialize: (buf: Buffer) => fromBinary(m.output, buf),
  };
}

function serialize(schema: DescMessage, msg: unknown): Buffer {
  const bytes = toBinary(schema, create(schema, msg as MessageInitShape<DescMessage>));
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---- Trace context -------------------------------------------------------
//
// Unary and server-streaming calls carry the caller's trace context (W3C
// `traceparent`, `tracestate`: whatever the registered propagator writes)
// in the call's metadata, and the server runs its handler under it, in a
// SERVER span named after the method. The Forward and Attend streams are
// long-lived (one per peer, shared by every step of every job), so their
// metadata says nothing about a given step: their request messages declare
// a `trace_context` map, which the client fills from the span active where
// each message is written (only a sampled one: an unsampled step carries
// nothing and costs nothing), and {@link messageContext} reads back. With
// no OpenTelemetry SDK registered no span is ever active, so none of this
// runs.

const tracer = trace.getTracer("@tessera/proto");

const metadataGetter: TextMapGetter<grpc.Metadata> = {
  keys: (md) => Object.keys(md.getMap()),
  get: (md, key) => {
    const v = md.get(key)[0];
    return typeof v === "string" ? v : undefined;
  },
};

/**
 * The propagator's fields for the active context, or undefined when no span
 * is active (or, with `sampledOnly`, none that is sampled).
 */
function activeCarrier(sampledOnly = false): Record<string, string> | undefined {
  const ctx = context.active();
  const span = trace.getSpan(ctx);
  if (!span) return undefined;
  if (sampledOnly && !(span.spanContext().traceFlags & TraceFlags.SAMPLED)) return undefined;
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return Object.keys(carrier).length > 0 ? carrier : undefined;
}

/**
 * The trace context a streamed request message (ForwardRequest,
 * AttendRequest) carries in its `trace_context` field, from its sender's
 * sampled span; undefined when it carries none (tracing off, or a step the
 * coordinator does not sample: trace nothing). Run the work for that
 * message under it (`context.with`) so its spans join the sender's trace.
 */
export function messageContext(message: { traceContext?: Record<string, string> }): Context | undefined {
  const fields = message.traceContext;
  if (!fields || Object.keys(fields).length === 0) return undefined;
  return propagation.extract(ROOT_CONTEXT, fields);
}

/** The caller's trace context from a call's metadata; the active context when it has none. */
function metadataContext(md: grpc.Metadata): Context {
  if (md.get("traceparent").length === 0) return context.active();
  return propagation.extract(ROOT_CONTEXT, md, metadataGetter);
}

/**
 * Runs `fn` in a SERVER span named after the method, under the caller's
 * context. A call that carries no trace context gets a span (a new trace's
 * root) only when `root` is set: Generate starts a job's trace, while the
 * Info polls and health checks of a cluster would only add noise.
 */
function serverSpan<T>(name: string, md: grpc.Metadata, root: boolean, fn: () => Promise<T>): Promise<T> {
  const parent = metadataContext(md);
  if (!root && !trace.getSpan(parent)) return context.with(parent, fn);
  return tracer.startActiveSpan(name, { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc" } }, parent, (span) =>
    endSpanWhen(span, fn()),
  );
}

/**
 * A request message that protobuf could not decode (a truncated varint or
 * length, a bad wire type, ...). The server-side deserializer returns it
 * instead of throwing: grpc-js answers a throwing deserializer with
 * INTERNAL, but bytes a client sent wrong are the client's error, so
 * {@link addService} closes the call with INVALID_ARGUMENT naming the
 * method and protobuf's reason, and the handler never sees it.
 */
class MalformedRequest {
  constructor(
    readonly method: string,
    readonly cause: unknown,
  ) {}

  toRpcError(): RpcError {
    const why = this.cause instanceof Error ? this.cause.message : String(this.cause);
    return new RpcError(Code.INVALID_ARGUMENT, `${this.method}: malformed request message: ${why}`, {
      cause: this.cause,
    });
  }
}

function decodeOrMark(m: DescMethod, buf: Buffer): unknown {
  try {
    return fromBinary(m.input, buf);
  } catch (err) {
    return new MalformedRequest(`${m.parent.typeName}.${m.name}`, err);
  }
}

/** Server-side handler of one method, by method kind. */
export type MethodImpl<M> = M extends { methodKind: "unary" }
  ? (
      request: MessageShape<In<M>>,
      call: grpc.ServerUnaryCall<MessageShape<In<M>>, MessageShape<Out<M>>>,
    ) => Promise<MessageInitShape<Out<M>>>
  : M extends { methodKind: "server_streaming" }
    ? (call: grpc.ServerWritableStream<MessageShape<In<M>>, MessageInitShape<Out<M>>>) => Promise<void>
    : M extends { methodKind: "bidi_streaming" }
      ? (call: grpc.ServerDuplexStream<MessageShape<In<M>>, MessageInitShape<Out<M>>>) => Promise<void>
      : never;

/** An implementation of every method of a service. */
export type ServiceImpl<S extends AnyGen> = { [K in keyof MethodsOf<S>]: MethodImpl<MethodsOf<S>[K]> };

/**
 * Registers `impl` for `service` on a grpc-js server. A unary handler returns
 * its response; a streaming handler writes to `call` and resolves when done
 * (the adapter ends the call). Anything a handler throws becomes the call's
 * status through {@link RpcError.from}.
 *
 * A request message that does not decode closes its call with
 * INVALID_ARGUMENT (not grpc-js' INTERNAL): a unary or server-streaming
 * handler is not called; on a client- or bidi-streaming call the handler
 * sees the requests before it and then the end of the stream (as if the
 * client had half-closed; later messages are dropped), and once it
 * resolves, or rejects, the call ends with INVALID_ARGUMENT.
 */
export function addService<S extends AnyGen>(server: grpc.Server, service: S, impl: ServiceImpl<S>): void {
  const handlers: Record<string, grpc.UntypedHandleCall> = {};
  const methods = impl as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  for (const method of service.methods) {
    const fn = methods[method.localName];
    if (!fn) throw new Error(`no implementation for ${service.typeName}.${method.name}`);
    const spanName = `${service.typeName}/${method.name}`;
    if (method.methodKind === "unary") {
      handlers[method.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        if (call.request instanceof MalformedRequest) return cb(toServiceError(call.request.toRpcError()));
        serverSpan(spanName, call.metadata, false, () => fn(call.request, call)).then(
          (res) => cb(null, res),
          (err: unknown) => cb(toServiceError(err)),
        );
      };
    } else {
      handlers[method.localName] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
        const fail = (err: unknown) => {
          // grpc-js turns an 'error' event into the call's status (and
          // ends it); destroy() would drop the call without any status.
          if (!call.writableEnded && !call.destroyed) call.emit("error", toServiceError(err));
        };
        if (call.request instanceof MalformedRequest) return fail(call.request.toRpcError());
        const malformed = method.methodKind === "server_streaming" ? undefined : endOnMalformed(call);
        const run =
          method.methodKind === "server_streaming"
            ? serverSpan(spanName, call.metadata, true, () => fn(call))
            : // A shared stream: its handler runs under no trace; each message brings its own (messageContext).
              context.with(ROOT_CONTEXT, () => fn(call));
        run.then(
          () => {
            if (malformed?.error) fail(malformed.error);
            else if (!call.writableEnded) call.end();
          },
          (err: unknown) => fail(malformed?.error ?? err),
        );
      };
    }
  }
  server.addService(definitionOf(service, decodeOrMark), handlers);
}

/**
 * Ends the request side of a client- or bidi-streaming call at its first
 * malformed message (grpc-js pushes each decoded request into the call's
 * Readable; a push after the end would be a stream error) and records it.
 */
function endOnMalformed(call: grpc.ServerWritableStream<unknown, unknown>): { error: RpcError | undefined } {
  const state: { error: RpcError | undefined } = { error: undefined };
  const readable = call as unknown as { push(chunk: unknown): boolean };
  const push = readable.push.bind(readable);
  readable.push = (chunk: unknown) => {
    if (state.error) return false;
    if (chunk instanceof MalformedRequest) {
      state.error = chunk.toRpcError();
      return push(null);
    }
    return push(chunk);
  };
  return state;
}

function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  const e = RpcError.from(err);
  return { code: e.code, details: e.message, metadata: e.metadata };
}

/**
 * The requests of a client- or bidi-streaming call, for `for await`. Use
 * this rather than iterating the call itself: a Readable's own async
 * iterator destroys the stream when the loop ends, which would drop the
 * call without sending its OK status once the client half-closes.
 */
export function requests<T>(
  call: grpc.ServerReadableStream<T, unknown> | grpc.ServerDuplexStream<T, unknown>,
): AsyncIterable<T> {
  return call.iterator({ destroyOnReturn: false }) as AsyncIterable<T>;
}

/** Per-call options of a typed client. */
export interface CallOptions {
  /** Cancels the call (status CANCELLED) when aborted. */
  signal?: AbortSignal;
  /** Absolute deadline, or milliseconds from now when a number below 1e12. */
  deadline?: Date | number;
  metadata?: grpc.Metadata;
}

/** Client-side function of one method, by method kind. */
export type MethodClient<M> = M extends { methodKind: "unary" }
  ? (request: MessageInitShape<In<M>>, options?: CallOptions) => Promise<MessageShape<Out<M>>>
  : M extends { methodKind: "server_streaming" }
    ? (request: MessageInitShape<In<M>>, options?: CallOptions) => grpc.ClientReadableStream<MessageShape<Out<M>>>
    : M extends { methodKind: "bidi_streaming" }
      ? (options?: CallOptions) => grpc.ClientDuplexStream<MessageInitShape<In<M>>, MessageShape<Out<M>>>
      : never;

/** A typed client: one function per method, plus the channel's lifecycle. */
export type Client<S extends AnyGen> = { [K in keyof MethodsOf<S>]: MethodClient<MethodsOf<S>[K]> } & {
  /** host:port this client talks to. */
  readonly address: string;
  /** Resolves when the channel is connected, rejects UNAVAILABLE after `timeoutMs`. */
  waitForReady(timeoutMs: number): Promise<void>;
  /** Closes the channel; idempotent. */
  close(): void;
};

/**
 * Default channel options: large messages (a prefill batch of activations),
 * and a large HTTP/2 receive window (`grpc-node.flow_control_window`, the
 * SETTINGS_INITIAL_WINDOW_SIZE this client announces, and its connection
 * window). With HTTP/2's default 64 KiB, a server sending a large response
 * (logits: batch x vocab_size x 4 bytes, 8 MB at batch 64 and a 32000-token
 * vocabulary; an Attend reply's o) stalls every 64 KiB until this process
 * reads and sends a WINDOW_UPDATE: a process wake-up per 64 KiB.
 */
export const defaultChannelOptions: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": 1024 * 1024 * 1024,
  "grpc.max_send_message_length": 1024 * 1024 * 1024,
  "grpc.keepalive_time_ms": 30_000,
  "grpc-node.flow_control_window": 64 * 1024 * 1024,
};

/** Who a client is: its transport security and an optional bearer token. */
export interface ClientAuth {
  /** TLS identity or plaintext; default: the process's ({@link transportSecurity}). */
  security?: TransportSecurity;
  /** Sent as `authorization: Bearer <token>` on every call (a coordinator's tenant token). */
  token?: string;
}

/**
 * Creates a typed client of `service` at `address` (host:port), secured as
 * `auth.security` or the process's transport security says (mutual TLS,
 * or plaintext on loopback only).
 * Unary calls reject with {@link RpcError}; streaming calls are grpc-js
 * streams (async iterable on the read side).
 * @throws RpcError FAILED_PRECONDITION when plaintext is asked for an
 *   address off loopback.
 * @throws RpcError INVALID_ARGUMENT when `address` is empty or holds a
 *   character outside printable ASCII or a space. Addresses often come
 *   from requests (an attention node's, a next stage's, AddNode's); a
 *   NUL in a host name ("127\0.0.0.1:1") reaches the resolver as "127"
 *   (0.0.0.127), and grpc-js leaves a socket connected after its channel
 *   closed without an 'error' listener, so its later reset
 *   (ECONNRESET) was an uncaught exception that ended the process.
 */
export function createClient<S extends AnyGen>(
  service: S,
  address: string,
  channelOptions: grpc.ChannelOptions = {},
  auth: ClientAuth = {},
): Client<S> {
  if (!/^[\x21-\x7e]+$/.test(address)) {
    throw new RpcError(
      Code.INVALID_ARGUMENT,
      `address ${JSON.stringify(address)} is not host:port (empty, or a space or control character)`,
    );
  }
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(service), service.name);
  let credentials: grpc.ChannelCredentials;
  try {
    credentials = channelCredentials(auth.security ?? transportSecurity(), address);
  } catch (err) {
    throw new RpcError(Code.FAILED_PRECONDITION, (err as Error).message, { cause: err });
  }
  const raw = new Ctor(address, credentials, { ...defaultChannelOptions, ...channelOptions });
  // A client-streaming or bidi call carries no trace context of its own: it
  // is opened by whichever step first needs it and then shared by every
  // later step of every job; its messages carry theirs.
  const metadata = (opts: CallOptions, traced = true): grpc.Metadata => {
    const carrier = traced ? activeCarrier() : undefined;
    if (auth.token === undefined && carrier === undefined) return opts.metadata ?? new grpc.Metadata();
    // A copy: the caller's metadata object is left as it was.
    const md = opts.metadata?.clone() ?? new grpc.Metadata();
    if (auth.token !== undefined && !md.get("authorization").length) md.set("authorization", `Bearer ${auth.token}`);
    for (const [k, v] of Object.entries(carrier ?? {})) md.set(k, v);
    return md;
  };
  const out: Record<string, unknown> = {
    address,
    waitForReady: (timeoutMs: number) =>
      new Promise<void>((resolve, reject) => {
        raw.waitForReady(Date.now() + timeoutMs, (err) =>
          err ? reject(new RpcError(grpc.status.UNAVAILABLE, `${address}: ${err.message}`, { cause: err })) : resolve(),
        );
      }),
    close: () => raw.close(),
  };
  const rawAny = raw as unknown as Record<string, (...args: unknown[]) => grpc.Call>;
  for (const method of service.methods) {
    const call = rawAny[method.localName]!.bind(raw);
    if (method.methodKind === "unary") {
      out[method.localName] = (req: unknown, opts: CallOptions = {}) =>
        new Promise((resolve, reject) => {
          const c = call(req, metadata(opts), callOptions(opts), (err: unknown, res: unknown) =>
            err ? reject(RpcError.from(err)) : resolve(res),
          );
          bindSignal(c, opts.signal);
        });
    } else if (method.methodKind === "server_streaming") {
      out[method.localName] = (req: unknown, opts: CallOptions = {}) => {
        const c = call(req, metadata(opts), callOptions(opts));
        bindSignal(c, opts.signal);
        return c;
      };
    } else {
      const carriesTraceContext = method.input.fields.some((f) => f.localName === "traceContext");
      out[method.localName] = (opts: CallOptions = {}) => {
        const c = call(metadata(opts, false), callOptions(opts)) as grpc.ClientWritableStream<unknown>;
        bindSignal(c, opts.signal);
        // Requests that declare a trace_context carry the sampled span active where each is written.
        if (carriesTraceContext) {
          const write = c.write.bind(c) as (...args: unknown[]) => boolean;
          c.write = ((chunk: unknown, ...rest: unknown[]) => {
            const carrier = typeof chunk === "object" && chunk !== null ? activeCarrier(true) : undefined;
            return write(carrier ? { ...(chunk as object), traceContext: carrier } : chunk, ...rest);
          }) as typeof c.write;
        }
        return c;
      };
    }
  }
  return out as Client<S>;
}

function callOptions(opts: CallOptions): grpc.CallOptions {
  if (opts.deadline === undefined) return {};
  const d = opts.deadline;
  return { deadline: typeof d === "number" && d < 1e12 ? Date.now() + d : d };
}

function bindSignal(call: grpc.Call, signal: AbortSignal | undefined): void {
  if (!signal) return;
  if (signal.aborted) {
    call.cancel();
    return;
  }
  const onAbort = () => call.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  call.on("status", () => signal.removeEventListener("abort", onAbort));
}
