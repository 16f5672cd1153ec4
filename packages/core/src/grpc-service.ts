/**
 * The lifecycle every Tessera role shares (the {@link Service} contract) on
 * top of {@link startGrpcServer}, so each role writes only what is its own:
 * its gRPC services and the work its drain and close add.
 */
import type { Server } from "@tessera/proto";
import { TesseraError } from "./errors.js";
import type { Service, ServiceState } from "./lifecycle.js";
import { startGrpcServer, type GrpcServer } from "./server.js";

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
  graceMs: number;
  /** In `start()`, before binding: work the role must finish before it serves (e.g. scanning its data). */
  onStart?(): void | Promise<void>;
  /** In `drain()`, after the state becomes "draining" and before the server stops taking calls: wind down the role's own work. */
  onDrain?(): void | Promise<void>;
  /** When true, `close()` of a running service drains first (with the grace period) before forcing. @default false */
  drainOnClose?: boolean;
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
 *   open calls finish for up to `graceMs`, and then forces the rest closed.
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
    server = await startGrpcServer(spec.host, spec.port, spec.serviceNames, (s) => spec.register(s));
  }

  async function drain(): Promise<void> {
    if (state !== "running") return;
    state = "draining";
    await spec.onDrain?.();
    await server?.shutdown(spec.graceMs);
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
