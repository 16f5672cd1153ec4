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
import { RpcError } from "./rpc-error.js";

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
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    def[method.localName] = methodDefinition(service, method);
  }
  return def as grpc.ServiceDefinition;
}

function methodDefinition(service: DescService, m: DescMethod): grpc.MethodDefinition<unknown, unknown> {
  const bidiOrClient = m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming";
  const bidiOrServer = m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming";
  return {
    path: `/${service.typeName}/${m.name}`,
    originalName: m.name,
    requestStream: bidiOrClient,
    responseStream: bidiOrServer,
    requestSerialize: (msg) => serialize(m.input, msg),
    requestDeserialize: (buf: Buffer) => fromBinary(m.input, buf),
    responseSerialize: (msg) => serialize(m.output, msg),
    responseDeserialize: (buf: Buffer) => fromBinary(m.output, buf),
  };
}

function serialize(schema: DescMessage, msg: unknown): Buffer {
  const bytes = toBinary(schema, create(schema, msg as MessageInitShape<DescMessage>));
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
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
 */
export function addService<S extends AnyGen>(server: grpc.Server, service: S, impl: ServiceImpl<S>): void {
  const handlers: Record<string, grpc.UntypedHandleCall> = {};
  const methods = impl as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  for (const method of service.methods) {
    const fn = methods[method.localName];
    if (!fn) throw new Error(`no implementation for ${service.typeName}.${method.name}`);
    if (method.methodKind === "unary") {
      handlers[method.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        fn(call.request, call).then(
          (res) => cb(null, res),
          (err: unknown) => cb(toServiceError(err)),
        );
      };
    } else {
      handlers[method.localName] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
        fn(call).then(
          () => {
            if (!call.writableEnded) call.end();
          },
          (err: unknown) => {
            // grpc-js turns an 'error' event into the call's status (and
            // ends it); destroy() would drop the call without any status.
            if (!call.writableEnded && !call.destroyed) call.emit("error", toServiceError(err));
          },
        );
      };
    }
  }
  server.addService(serviceDefinition(service), handlers);
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

/**
 * Creates a typed client of `service` at `address` (host:port, plaintext).
 * Unary calls reject with {@link RpcError}; streaming calls are grpc-js
 * streams (async iterable on the read side).
 */
export function createClient<S extends AnyGen>(
  service: S,
  address: string,
  channelOptions: grpc.ChannelOptions = {},
): Client<S> {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(service), service.name);
  const raw = new Ctor(address, grpc.credentials.createInsecure(), { ...defaultChannelOptions, ...channelOptions });
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
          const c = call(req, opts.metadata ?? new grpc.Metadata(), callOptions(opts), (err: unknown, res: unknown) =>
            err ? reject(RpcError.from(err)) : resolve(res),
          );
          bindSignal(c, opts.signal);
        });
    } else if (method.methodKind === "server_streaming") {
      out[method.localName] = (req: unknown, opts: CallOptions = {}) => {
        const c = call(req, opts.metadata ?? new grpc.Metadata(), callOptions(opts));
        bindSignal(c, opts.signal);
        return c;
      };
    } else {
      out[method.localName] = (opts: CallOptions = {}) => {
        const c = call(opts.metadata ?? new grpc.Metadata(), callOptions(opts));
        bindSignal(c, opts.signal);
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
