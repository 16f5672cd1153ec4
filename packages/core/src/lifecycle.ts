/**
 * Lifecycle of a long-lived Tessera component, and the one place that
 * installs signal handlers for a role's process.
 */

/** States of a {@link Service}. */
export type ServiceState = "created" | "starting" | "running" | "draining" | "closed";

/**
 * A long-lived component (a node or the coordinator). `start()` binds and
 * begins serving; `drain()` stops taking new work and lets current work end;
 * `close()` releases everything and is idempotent.
 */
export interface Service {
  /** "coordinator", "gpu", "memory" or "storage". */
  readonly role: string;
  readonly state: ServiceState;
  /** host:port it serves on; valid once started. */
  readonly address: string;
  start(): Promise<void>;
  drain(): Promise<void>;
  close(): Promise<void>;
}

/** Message a role's child process sends its parent (over the IPC channel) once it serves. */
export interface ReadyMessage {
  type: "ready";
  role: string;
  address: string;
  pid: number;
}

/**
 * Starts `service` as the main component of this process: on SIGINT/SIGTERM
 * (or when a parent's IPC channel closes) drains and closes it, and a second
 * signal exits at once; tells a parent process on the IPC channel that it is
 * ready; logs to stderr. Resolves when the service has closed; rejects when
 * it cannot start (e.g. its port is taken). Either way the signal handlers
 * and the IPC channel are released, so the process can exit by itself.
 */
export async function runUntilSignal(
  service: Service,
  log: (line: string) => void = (l) => process.stderr.write(l + "\n"),
): Promise<void> {
  let stopping: Promise<void> | undefined;
  let stopped!: () => void;
  const done = new Promise<void>((resolve) => (stopped = resolve));
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) {
      log(`${service.role}: second ${sig}, exiting now`);
      process.exit(130);
    }
    log(`${service.role}: ${sig}, draining`);
    stopping = service
      .drain()
      .then(() => service.close())
      .catch((err: unknown) => log(`${service.role}: error while stopping: ${(err as Error).message}`))
      .finally(stopped);
  };
  // A parent that goes away (its IPC channel closes) stops us too, so a
  // killed `tessera run` never leaves nodes behind.
  const onDisconnect = () => onSignal("SIGTERM");
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("disconnect", onDisconnect);
  try {
    await service.start();
    log(`${service.role}: serving on ${service.address}`);
    if (process.send) {
      const msg: ReadyMessage = { type: "ready", role: service.role, address: service.address, pid: process.pid };
      process.send(msg);
    }
    await done;
    log(`${service.role}: stopped`);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("disconnect", onDisconnect);
    // An open IPC channel keeps the event loop (and the process) alive.
    if (process.connected) process.disconnect();
  }
}

/** Work tied to a service's life, for {@link withCompanion}. */
export interface CompanionHooks {
  /** Runs once the service serves (e.g. register it, start a worker that calls it). */
  afterStart(): Promise<void>;
  /** Runs first in `drain()` and `close()`, while the service still serves (e.g. deregister, stop the worker). */
  beforeStop(): Promise<void>;
}

/**
 * Wraps `service` with a companion that must run only while it serves (a
 * registry entry, a job worker): `start()` starts the service, then runs
 * `afterStart`; when that throws, the service is closed (a failure of that
 * close is dropped) and the companion's error is rethrown. `drain()` and
 * `close()` run `beforeStop` first, then the service's own, so the
 * companion stops before the service does. The wrapper reports the
 * service's role, state and address.
 * @throws (from `start()`) what the service's `start()` or `afterStart` throws.
 */
export function withCompanion(service: Service, hooks: CompanionHooks): Service {
  return {
    role: service.role,
    get state() {
      return service.state;
    },
    get address() {
      return service.address;
    },
    async start() {
      await service.start();
      try {
        await hooks.afterStart();
      } catch (err) {
        await service.close().catch(() => undefined);
        throw err;
      }
    },
    async drain() {
      await hooks.beforeStop();
      await service.drain();
    },
    async close() {
      await hooks.beforeStop();
      await service.close();
    },
  };
}
