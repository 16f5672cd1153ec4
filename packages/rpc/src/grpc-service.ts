/**
 * The lifecycle every Tessera role shares (the {@link Service} contract) on
 * top of {@link startGrpcServer}, so each role writes only what is its own:
 * its gRPC services and the work its drain and close add.
 */
import {
  Attention,
  GpuNode,
  NodeProfileSchema,
  createClient,
  requests,
  selfChannelOptions,
  toJson,
  type Server,
  type ServerDuplexStream,
} from "@tessera/proto";
import { TesseraError, type Service, type ServiceState, type NodeRole } from "@tessera/core";
import { startGrpcServer, type GrpcServer, type ServerSecurity } from "./server.js";

/** What a role gives {@link createGrpcService}. Hooks may be sync or async. */
export interface GrpcServiceSpec<R extends string> {
  /** "coordinator", "gpu", "memory" or "storage". */
  role: R;
  /** The role in messages, e.g. "memory-node". */
  name: string;
  /** Address to listen on. */
  host: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** gRPC service names grpc.health.v1 reports on. */
  serviceNames: readonly string[];
  /** Adds the role's services to the server (called once, in `start()`). */
  register(server: Server): void;
  /** How long `drain()` lets open calls finish before forcing them closed, in ms. */
  shutdownGraceMs: number;
  /** In `start()`, before binding: work the role must finish before it serves (e.g. scanning its data). */
  onStart?(): void | Promise<void>;
  /** In `drain()`, after the state becomes "draining" and before the server stops taking calls: wind down the role's own work. */
  onDrain?(): void | Promise<void>;
  /**
   * Largest message the server accepts, bytes; larger ones are refused
   * RESOURCE_EXHAUSTED by grpc-js before decoding. @default the channel
   * default of every Tessera service (1 GiB)
   */
  maxReceiveBytes?: number;
  /** When true, `close()` of a running service drains first (with the grace period) before forcing. @default false */
  drainOnClose?: boolean;
  /** TLS or plaintext, and whether clients must present a certificate. @default the process's security, mutual TLS */
  secure?: ServerSecurity;
  /** In `close()`, after the state becomes "closed" and before the forced shutdown: end the role's open calls cleanly. */
  beforeShutdown?(): void | Promise<void>;
  /** In `close()`, once the server is down: release what the role holds (files, sessions, buffers, clients). */
  onClose?(): void | Promise<void>;
}

/**
 * Creates the {@link Service} of one role around a grpc-js server; nothing
 * is bound until `start()`. State transitions:
 *
 * - `start()`: created → starting → running. Runs `onStart`, then binds
 *   `host:port` and registers the services (with grpc.health.v1). When that
 *   fails the service is closed (as by `close()`, hooks included) and
 *   `start()` rejects with the cause; called in any state but "created" it
 *   rejects with a TesseraError naming the state.
 * - `drain()`: running → draining; a no-op in any other state. Runs
 *   `onDrain`, then marks health NOT_SERVING and stops taking calls, lets
 *   open calls finish for up to `shutdownGraceMs`, and then forces the rest closed.
 * - `close()`: any state → closed; idempotent (later calls return the same
 *   promise). With `drainOnClose` a running service drains first. Then runs
 *   `beforeShutdown`, cancels every open call at once (no grace: a drain
 *   still waiting out its grace period ends now), and runs `onClose`. A
 *   `start()` still binding is waited for, so its server is shut down too.
 *
 * `address` is the bound host:port once started (the real port when 0 was
 * asked for), and the configured host:port before.
 */
export function createGrpcService<R extends string>(spec: GrpcServiceSpec<R>): Service & { readonly role: R } {
  let state: ServiceState = "created";
  let server: GrpcServer | undefined;
  let binding: Promise<void> | undefined;
  let closing: Promise<void> | undefined;

  async function bind(): Promise<void> {
    await spec.onStart?.();
    server = await startGrpcServer(
      spec.host,
      spec.port,
      spec.serviceNames,
      (s) => spec.register(s),
      spec.maxReceiveBytes,
      spec.secure,
    );
  }

  async function drain(): Promise<void> {
    if (state !== "running") return;
    state = "draining";
    await spec.onDrain?.();
    await server?.shutdown(spec.shutdownGraceMs);
  }

  function close(): Promise<void> {
    closing ??= (async () => {
      if (spec.drainOnClose) await drain();
      state = "closed";
      await binding?.catch(() => undefined);
      await spec.beforeShutdown?.();
      if (server) {
        // shutdown() is shared with a drain in progress; forcing ends its grace period.
        const done = server.shutdown(0);
        server.server.forceShutdown();
        await done;
      }
      await spec.onClose?.();
    })();
    return closing;
  }

  return {
    role: spec.role,
    get state() {
      return state;
    },
    get address() {
      return server?.address ?? `${spec.host}:${spec.port}`;
    },
    async start() {
      if (state !== "created") throw new TesseraError(`${spec.name}: start() called in state ${state}`);
      state = "starting";
      binding = bind();
      try {
        await binding;
      } catch (err) {
        await close().catch(() => undefined);
        throw err;
      }
      // close() may have been called while binding; it shuts the server down.
      if (state === "starting") state = "running";
    },
    drain,
    close,
  };
}

/**
 * The request loops of a role's long-lived bidi-streaming calls (the
 * Attend streams of memory- and storage-nodes), which a drain must end
 * itself: such a call never ends on its own, so without this a drain waits
 * out its whole grace period and then cancels it (status CANCELLED) with a
 * request possibly half done.
 */
export interface RequestLoops {
  /**
   * Serves `call`: reads one request, writes `handle`'s response, then the
   * next, so responses come in request order. Resolves (and the gRPC
   * adapter ends the call with OK) when the client half-closes, or, once
   * {@link RequestLoops.stop} was called, after the request in flight is
   * answered; requests not yet read are never handled. A call that arrives
   * after `stop()` resolves at once. Rejects when reading the call fails.
   */
  serve<Req, Res>(call: ServerDuplexStream<Req, Res>, handle: (req: Req) => Res | Promise<Res>): Promise<void>;
  /**
   * Stops taking requests on every call, now and later, and resolves when
   * each loop has answered its request in flight and ended, or after
   * `graceMs` (default: no limit), whichever is first. Idempotent.
   */
  stop(graceMs?: number): Promise<void>;
  /** Number of loops serving now. */
  readonly size: number;
}

const STOP = Symbol("stop");

/**
 * Creates the {@link RequestLoops} of one service. A role calls `stop()`
 * from its `onDrain` and `beforeShutdown` hooks, so its streams end with OK
 * and the server shuts down without waiting out the grace period.
 */
export function createRequestLoops(): RequestLoops {
  let stopping = false;
  const loops = new Set<{ wake(): void; done: Promise<void> }>();
  return {
    async serve<Req, Res>(call: ServerDuplexStream<Req, Res>, handle: (req: Req) => Res | Promise<Res>) {
      if (stopping) return;
      const it = requests(call)[Symbol.asyncIterator]();
      // Wakes the loop while it waits for a request (a fresh promise per
      // read: racing one long-lived promise would pile up a reaction on it
      // per request); while it handles one, `stopping` ends it after.
      let wake: (() => void) | undefined;
      let finish!: () => void;
      const loop = { wake: () => wake?.(), done: new Promise<void>((resolve) => (finish = resolve)) };
      loops.add(loop);
      try {
        while (!stopping) {
          const next = await new Promise<IteratorResult<Req> | typeof STOP>((resolve, reject) => {
            wake = () => resolve(STOP);
            // A read still pending when stop() wakes the loop is abandoned:
            // the call ends without it.
            it.next().then(resolve, reject);
          });
          wake = undefined;
          if (next === STOP || next.done) break;
          call.write(await handle(next.value));
        }
      } finally {
        loops.delete(loop);
        finish();
      }
    },
    async stop(graceMs = Infinity) {
      stopping = true;
      const running = [...loops];
      for (const l of running) l.wake();
      const all = Promise.all(running.map((l) => l.done)).then(() => undefined);
      if (!Number.isFinite(graceMs)) return all;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([all, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
      clearTimeout(timer);
    },
    get size() {
      return loops.size;
    },
  };
}

/**
 * A node's price and profile as it advertises them (e.g. in the NATS node
 * registry), read from its own Info RPC at `address`: GpuNode.Info for a
 * gpu-node, Attention.Info for a memory- or storage-node. Called by a node
 * process once it serves, so the advert says what Info says.
 * @returns `pricePerHour` in $/h (0 = unknown) and `profile` as NodeProfile
 *   proto JSON, undefined when the node has none.
 * @throws RpcError when Info does not answer within 10 s (DEADLINE_EXCEEDED)
 *   or fails.
 */
export async function readNodeAdvert(
  role: NodeRole,
  address: string,
): Promise<{ pricePerHour: number; profile: unknown }> {
  // A wildcard bind is dialled on loopback, checked against its own certificate's name.
  const local = address.replace(/^(0\.0\.0\.0|\[::\]|::):/, "127.0.0.1:");
  const channel = local === address ? {} : selfChannelOptions();
  const client = role === "gpu" ? createClient(GpuNode, local, channel) : createClient(Attention, local, channel);
  try {
    const info = await client.info({}, { deadline: 10_000 });
    return {
      pricePerHour: info.pricePerHour,
      profile: info.profile ? toJson(NodeProfileSchema, info.profile) : undefined,
    };
  } finally {
    client.close();
  }
}
