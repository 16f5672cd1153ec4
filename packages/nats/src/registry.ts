/**
 * The node registry: a JetStream key-value bucket `${prefix}-nodes` in which
 * every node keeps a record of itself (role, address, price, profile) and
 * heartbeats, and which a coordinator watches to learn which nodes joined,
 * left (deregistered), were lost (stopped heartbeating) or came back.
 *
 * Key: `<role>.<address with ":" replaced by "_">` (the KV key charset has
 * no ":"), e.g. `memory.127.0.0.1_50051`. Value: a {@link NodeRecord} as
 * JSON.
 */
import { randomUUID } from "node:crypto";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { NODE_ROLES, RunningClock, withCompanion, type Service, type NodeRole } from "@tessera/core";
import { DEFAULT_NATS_PREFIX, connectNats, NatsError } from "./connection.js";
import { redactNatsServers } from "./server-urls.js";

/** Role of a node in the registry. */
export type RegistryRole = NodeRole;

/** One node's record in the registry bucket (stored as JSON). */
export interface NodeRecord {
  role: RegistryRole;
  /** host:port other services reach the node at (its advertised address). */
  address: string;
  /** Configured price in US dollars per hour ($/h); 0 = unknown. */
  pricePerHour: number;
  /** The node's tessera.v1.NodeProfile in proto JSON (`toJson`), when it has one. */
  profile?: unknown;
  /** When the node registered, ISO 8601 (UTC). */
  startedAt: string;
  /** When the node last heartbeated, ISO 8601 (UTC) by the node's clock. */
  heartbeatAt: string;
  /** Random id of this run of the node (a restart at the same address gets a new one). */
  nodeId: string;
}

/** Name of the registry bucket for `prefix`: `${prefix}-nodes`. */
export function registryBucket(prefix = DEFAULT_NATS_PREFIX): string {
  return `${prefix}-nodes`;
}

/**
 * Key of a node in the registry: `<role>.<address with ":" → "_">`.
 * @throws RangeError when the address holds characters a KV key cannot (only letters, digits, "-", "_", ".", ":" are allowed).
 */
export function registryKey(role: RegistryRole, address: string): string {
  if (!/^[A-Za-z0-9._:-]+$/.test(address)) {
    throw new RangeError(
      `address ${JSON.stringify(address)}: only letters, digits, "-", "_", "." and ":" can be registered`,
    );
  }
  return `${role}.${address.replace(/:/g, "_")}`;
}

/** What a connection option names, for messages: the servers string (credentials redacted), or the server an open connection is on. */
function serversOf(nats: string | NatsConnection): string {
  return typeof nats === "string" ? redactNatsServers(nats) : nats.getServer();
}

/**
 * Opens (creating it when missing) the registry bucket `${prefix}-nodes`
 * with history 1 (only the last record of a node is kept).
 * @throws NatsError naming the servers and the bucket when JetStream is not
 *   answering or a stream `KV_${bucket}` exists that is not a key-value
 *   bucket (a name clash).
 */
export async function openRegistryBucket(nc: NatsConnection, prefix = DEFAULT_NATS_PREFIX): Promise<KV> {
  const bucket = registryBucket(prefix);
  const servers = nc.getServer();
  let kv: KV;
  let subjects: readonly string[];
  try {
    kv = await new Kvm(nc).create(bucket, { history: 1 });
    subjects = (await kv.status()).streamInfo.config.subjects ?? [];
  } catch (e) {
    throw new NatsError(servers, `cannot open the node registry bucket "${bucket}"`, { cause: e });
  }
  if (!subjects.includes(`$KV.${bucket}.>`)) {
    throw new NatsError(
      servers,
      `node registry bucket "${bucket}": stream "KV_${bucket}" exists but is not a key-value bucket ` +
        `(subjects ${JSON.stringify(subjects)}); pick another prefix or delete that stream`,
    );
  }
  return kv;
}

/** Options of {@link registerNode}. */
export interface RegisterNodeOptions {
  /** NATS servers (comma-separated host:port), or an open connection to use (it is not closed). */
  nats: string | NatsConnection;
  /** Prefix of the registry bucket. @default "tessera" */
  prefix?: string;
  role: RegistryRole;
  /** host:port the node is reached at. */
  address: string;
  /** $/h; 0 = unknown. @default 0 */
  pricePerHour?: number;
  /** NodeProfile proto JSON, when the node has a profile. */
  profile?: unknown;
  /** Heartbeat period, in ms. @default 1000 */
  heartbeatMs?: number;
  /** Log sink (heartbeat failures and recoveries). @default stderr */
  log?: (line: string) => void;
}

/** A node's registration, live until {@link NodeRegistration.deregister}. */
export interface NodeRegistration {
  /** The bucket, e.g. "tessera-nodes". */
  readonly bucket: string;
  /** The node's key in it. */
  readonly key: string;
  /** The record as last written. */
  readonly record: Readonly<NodeRecord>;
  /**
   * Stops heartbeating and deletes the record (watchers see "left"), then
   * closes the connection when the registration opened it. Waits at most
   * `timeoutMs` (default 2000) for the delete; idempotent.
   * @throws NatsError naming the servers and bucket when the delete fails.
   */
  deregister(timeoutMs?: number): Promise<void>;
}

/**
 * Registers a node: puts its record in `${prefix}-nodes`, then heartbeats
 * every `heartbeatMs` (re-putting the record with a fresh `heartbeatAt`).
 * A failed heartbeat is logged (once per failure streak) and retried at
 * the next period, reopening the bucket (so a NATS server restarted
 * without its JetStream data gets the record back); while the connection
 * is down none is sent, and one is sent as soon as it reconnects.
 * @returns the registration; call `deregister()` when the node stops.
 * @throws NatsError naming the servers (and the bucket) when NATS is
 *   unreachable, the bucket clashes or the first put fails; RangeError when
 *   the role, address or heartbeatMs is invalid.
 */
export async function registerNode(o: RegisterNodeOptions): Promise<NodeRegistration> {
  if (!NODE_ROLES.includes(o.role))
    throw new RangeError(`role: must be gpu, memory or storage, got ${JSON.stringify(o.role)}`);
  const key = registryKey(o.role, o.address);
  const heartbeatMs = o.heartbeatMs ?? 1000;
  if (!Number.isFinite(heartbeatMs) || heartbeatMs <= 0) {
    throw new RangeError(`heartbeatMs: must be a positive number of ms, got ${heartbeatMs}`);
  }
  const log = o.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const prefix = o.prefix ?? DEFAULT_NATS_PREFIX;
  const bucket = registryBucket(prefix);
  const owned = typeof o.nats === "string";
  const nc =
    typeof o.nats === "string"
      ? await connectNats({ servers: o.nats, name: `tessera-${o.role}-node ${o.address}` })
      : o.nats;
  const servers = serversOf(o.nats);
  const now = new Date().toISOString();
  const record: NodeRecord = {
    role: o.role,
    address: o.address,
    pricePerHour: o.pricePerHour ?? 0,
    ...(o.profile !== undefined ? { profile: o.profile } : {}),
    startedAt: now,
    heartbeatAt: now,
    nodeId: randomUUID(),
  };
  let kv: KV | undefined;
  const put = async () => {
    kv ??= await openRegistryBucket(nc, prefix);
    record.heartbeatAt = new Date().toISOString();
    try {
      // A put that gets no answer (JetStream still starting after a server
      // restart) gives up within about a period, so the next one is not held up.
      await kv.put(key, JSON.stringify(record), { timeout: Math.min(5000, Math.max(500, heartbeatMs)) });
    } catch (e) {
      kv = undefined; // reopen (and recreate when missing) at the next try
      throw e;
    }
  };
  try {
    await put();
  } catch (e) {
    if (owned) await nc.close().catch(() => undefined);
    throw e instanceof NatsError ? e : new NatsError(servers, `registering ${key} in bucket "${bucket}"`, { cause: e });
  }

  let failing = false;
  let inFlight: Promise<void> | undefined;
  let stopped = false;
  let connected = true;
  const beat = () => {
    // While NATS is unreachable a put would only wait out its timeout; the
    // reconnect beats at once instead.
    if (inFlight || stopped || !connected) return;
    inFlight = put()
      .then(() => {
        if (failing) log(`registry: heartbeat of ${key} to bucket "${bucket}" at ${servers} works again`);
        failing = false;
      })
      .catch((e: unknown) => {
        if (!failing) {
          log(`registry: heartbeat of ${key} to bucket "${bucket}" at ${servers} failed: ${(e as Error).message}`);
        }
        failing = true;
      })
      .finally(() => (inFlight = undefined));
  };
  const timer = setInterval(beat, heartbeatMs);
  timer.unref();
  const status = nc.status();
  void (async () => {
    for await (const s of status) {
      if (s.type === "disconnect") connected = false;
      else if (s.type === "reconnect") {
        connected = true;
        beat();
      }
    }
  })().catch(() => undefined);

  let deregistering: Promise<void> | undefined;
  return {
    bucket,
    key,
    record,
    deregister(timeoutMs = 2000) {
      deregistering ??= (async () => {
        stopped = true;
        clearInterval(timer);
        (status as { stop?: () => void }).stop?.();
        await inFlight;
        let t: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            (async () => {
              kv ??= await openRegistryBucket(nc, prefix);
              await kv.delete(key);
            })(),
            new Promise<never>((_, reject) => {
              t = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
            }),
          ]);
        } catch (e) {
          throw new NatsError(servers, `deregistering ${key} from bucket "${bucket}"`, { cause: e });
        } finally {
          clearTimeout(t);
          if (owned) await nc.close().catch(() => undefined);
        }
      })();
      return deregistering;
    },
  };
}

/** A change of the registered node set, as a watcher reports it. */
export interface RegistryEvent {
  /**
   * "joined": a record appeared (or a stale one heartbeats again);
   * "left": the node deleted its record (deregistered); "lost": no
   * heartbeat for `lostAfterMs`; "back": a lost node heartbeats again.
   */
  kind: "joined" | "left" | "lost" | "back";
  role: RegistryRole;
  address: string;
  /** The node's record (for "left": the last one seen). */
  record: NodeRecord;
  /** Why, for logs, e.g. "no heartbeat for 3000 ms". */
  reason: string;
}

/** Options of {@link watchRegistry}. */
export interface WatchRegistryOptions {
  /** NATS servers (comma-separated host:port), or an open connection to use (it is not closed). */
  nats: string | NatsConnection;
  /** Prefix of the registry bucket. @default "tessera" */
  prefix?: string;
  /** The nodes' heartbeat period, in ms (sets the default of `lostAfterMs`). @default 1000 */
  heartbeatMs?: number;
  /** A node with no heartbeat for this long is reported lost, in ms. @default 3 × heartbeatMs */
  lostAfterMs?: number;
  /** Called on every change, in order; an exception is logged and does not stop the watcher. */
  onEvent(event: RegistryEvent): void;
  /** Log sink. @default stderr */
  log?: (line: string) => void;
  /** Monotonic clock in ms (tests inject one to simulate a paused watcher). @default performance.now */
  now?: () => number;
}

/** A node as the watcher knows it. */
export interface WatchedNode {
  record: NodeRecord;
  /** "up": heartbeating; "lost": no heartbeat for `lostAfterMs`. */
  state: "up" | "lost";
}

/** A running registry watcher. */
export interface RegistryWatcher {
  /** The bucket watched, e.g. "tessera-nodes". */
  readonly bucket: string;
  /** The nodes known now (joined and not left), in key order. */
  nodes(): WatchedNode[];
  /** Stops watching (and closes the connection when the watcher opened it). Idempotent. */
  stop(): Promise<void>;
}

/**
 * Watches the registry bucket `${prefix}-nodes` and reports each change to
 * `onEvent`. Records present when the watch starts are reported "joined"
 * unless their last write is older than `lostAfterMs` by the NATS server's
 * timestamp (a node that died without deregistering; the node's own clock
 * is not trusted): those are reported only when they heartbeat again. A
 * record written while the watch runs is always a node that is up. Heartbeats are timed on the watcher's clock (a timer checks every
 * `lostAfterMs / 10` ms, clamped to 25..250 ms, so a node is reported at
 * most 250 ms after its `lostAfterMs` ran out); while the connection to
 * NATS is down nobody is declared lost, and after it reconnects every node
 * gets a fresh `lostAfterMs`. Heartbeats are judged by the time the
 * watcher itself was running: when its timer finds a gap between two
 * checks longer than half of `lostAfterMs - heartbeatMs` (at least two
 * check periods), the watcher was stalled (its process SIGSTOPped, a long
 * GC pause, the machine asleep), the heartbeats of that time wait unread
 * in its socket, and every node gets a fresh `lostAfterMs` instead of
 * being judged by the clock (a line is logged).
 *
 * Resolves once the records present at the start have been reported (or
 * after 2 s), so a coordinator that awaits it starts with its nodes.
 * @throws NatsError naming the servers and the bucket when NATS is
 *   unreachable or the bucket clashes; RangeError for a bad heartbeatMs /
 *   lostAfterMs.
 */
export async function watchRegistry(o: WatchRegistryOptions): Promise<RegistryWatcher> {
  const heartbeatMs = o.heartbeatMs ?? 1000;
  const lostAfterMs = o.lostAfterMs ?? 3 * heartbeatMs;
  for (const [name, v] of [
    ["heartbeatMs", heartbeatMs],
    ["lostAfterMs", lostAfterMs],
  ] as const) {
    if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${name}: must be a positive number of ms, got ${v}`);
  }
  const log = o.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const now = o.now ?? (() => performance.now());
  const prefix = o.prefix ?? DEFAULT_NATS_PREFIX;
  const bucket = registryBucket(prefix);
  const owned = typeof o.nats === "string";
  const nc =
    typeof o.nats === "string" ? await connectNats({ servers: o.nats, name: "tessera-registry-watcher" }) : o.nats;
  const servers = serversOf(o.nats);

  let kv: KV;
  let initialMessages: number;
  try {
    kv = await openRegistryBucket(nc, prefix);
    initialMessages = (await kv.status()).streamInfo.state.messages;
  } catch (e) {
    if (owned) await nc.close().catch(() => undefined);
    throw e instanceof NatsError ? e : new NatsError(servers, `watching bucket "${bucket}"`, { cause: e });
  }

  /** Known nodes by key: record, state, and when the last heartbeat arrived (`now()`, ms). */
  const known = new Map<string, KnownNode>();
  let connected = true;
  let stopped = false;

  const emit = (kind: RegistryEvent["kind"], record: NodeRecord, reason: string) => {
    try {
      o.onEvent({ kind, role: record.role, address: record.address, record, reason });
    } catch (e) {
      log(`registry: handler of ${kind} ${record.role}-node ${record.address} failed: ${(e as Error).message}`);
    }
  };

  const parse = (key: string, value: Uint8Array): NodeRecord | undefined => {
    try {
      const r = JSON.parse(new TextDecoder().decode(value)) as NodeRecord;
      if (!NODE_ROLES.includes(r.role) || typeof r.address !== "string" || registryKey(r.role, r.address) !== key) {
        throw new Error("role/address do not match the key");
      }
      return r;
    } catch (e) {
      log(`registry: bucket "${bucket}" key ${key}: ignoring a bad record: ${(e as Error).message}`);
      return undefined;
    }
  };

  let initialDone!: () => void;
  const initial = new Promise<void>((resolve) => (initialDone = resolve));
  if (initialMessages === 0) initialDone();
  const initialTimer = setTimeout(initialDone, 2000);
  initialTimer.unref();

  let iter: Awaited<ReturnType<KV["watch"]>>;
  try {
    iter = await kv.watch({});
  } catch (e) {
    clearTimeout(initialTimer);
    if (owned) await nc.close().catch(() => undefined);
    throw new NatsError(servers, `watching bucket "${bucket}"`, { cause: e });
  }

  // Records listed at start (before the watch's delta reaches 0) may be
  // stale: one whose last write is older than lostAfterMs by the NATS
  // server's clock (not the node's: clocks differ) is reported when it
  // heartbeats again. Every PUT seen live is a node that is up.
  let live = initialMessages === 0;
  const loop = (async () => {
    for await (const e of iter) {
      const node = known.get(e.key);
      if (e.operation === "PUT") {
        const record = parse(e.key, e.value);
        if (record) {
          if (!node) {
            const age = live ? 0 : Date.now() - e.created.getTime();
            if (age > lostAfterMs) {
              log(
                `registry: ${record.role}-node ${record.address} has not heartbeated for ${Math.round(age)} ms; ` +
                  `reported when it does`,
              );
            } else {
              known.set(e.key, { record, state: "up", seenAt: now() - Math.max(0, age) });
              emit("joined", record, "registered");
            }
          } else {
            node.record = record;
            node.seenAt = now();
            if (node.state === "lost") {
              node.state = "up";
              emit("back", record, "heartbeats again");
            }
          }
        }
      } else if (node) {
        known.delete(e.key);
        emit("left", node.record, "deregistered");
      }
      if (e.delta === 0) {
        live = true;
        initialDone();
      }
    }
  })().catch((e: unknown) => {
    if (!stopped) log(`registry: watch of bucket "${bucket}" at ${servers} ended: ${(e as Error).message}`);
  });

  // Connection state: nobody is lost while NATS itself is unreachable.
  const status = nc.status();
  void (async () => {
    for await (const s of status) {
      if (s.type === "disconnect") {
        connected = false;
        log(`registry: disconnected from NATS at ${servers}; no node is declared lost until it is back`);
      } else if (s.type === "reconnect") {
        connected = true;
        log(`registry: reconnected to NATS at ${servers}`);
        const t = now();
        for (const n of known.values()) n.seenAt = t;
      }
    }
  })().catch(() => undefined);

  const check = checkHeartbeats(known, {
    heartbeatMs,
    lostAfterMs,
    now,
    log,
    paused: () => !connected || stopped,
    lost: (n, reason) => emit("lost", n.record, reason),
  });

  await initial;
  clearTimeout(initialTimer);

  let stopping: Promise<void> | undefined;
  return {
    bucket,
    nodes() {
      return [...known.entries()]
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([, n]) => ({ record: n.record, state: n.state }));
    },
    stop() {
      stopping ??= (async () => {
        stopped = true;
        clearInterval(check);
        (status as { stop?: () => void }).stop?.();
        iter.stop();
        await loop;
        if (owned) await nc.close().catch(() => undefined);
      })();
      return stopping;
    },
  };
}

/** A node as a watcher tracks it: record, state, and when its last heartbeat arrived (the watcher's `now()`, ms). */
interface KnownNode {
  record: NodeRecord;
  state: "up" | "lost";
  seenAt: number;
}

/**
 * The watcher's lost-node timer (see {@link watchRegistry}): every
 * `lostAfterMs / 10` ms (25..250) marks an up node with no heartbeat for
 * `lostAfterMs` lost and calls `lost`; skipped while `paused()`; a gap
 * between checks over (lostAfterMs - heartbeatMs) / 2 (at least two
 * periods) is the watcher's own stall and gives every node a fresh
 * `lostAfterMs` instead. Returns the (unref()ed) interval.
 */
function checkHeartbeats(
  known: ReadonlyMap<string, KnownNode>,
  o: {
    heartbeatMs: number;
    lostAfterMs: number;
    now: () => number;
    log: (line: string) => void;
    paused: () => boolean;
    lost: (n: KnownNode, reason: string) => void;
  },
): NodeJS.Timeout {
  const { lostAfterMs, now } = o;
  const checkMs = Math.max(25, Math.min(250, lostAfterMs / 10));
  const clock = new RunningClock(Math.max(2 * checkMs, (lostAfterMs - o.heartbeatMs) / 2), now);
  const check = setInterval(() => {
    const { stalledMs } = clock.tick();
    if (o.paused()) return;
    const t = now();
    if (stalledMs > 0) {
      o.log(
        `registry: this watcher was not running for ${Math.round(stalledMs)} ms (process paused?); ` +
          `every node gets a fresh ${lostAfterMs} ms to heartbeat`,
      );
      for (const n of known.values()) n.seenAt = t;
      return;
    }
    for (const n of known.values()) {
      if (n.state === "up" && t - n.seenAt > lostAfterMs) {
        n.state = "lost";
        o.lost(n, `no heartbeat for ${Math.round(t - n.seenAt)} ms (lost after ${lostAfterMs} ms)`);
      }
    }
  }, checkMs);
  check.unref();
  return check;
}

/** Registry options of a node process (`tessera node ... --nats --nats-prefix --advertise`). */
export interface NodeRegistryOptions {
  /** NATS servers (comma-separated host:port); without it the node does not register. */
  nats?: string;
  /** Prefix of the registry bucket. @default "tessera" */
  natsPrefix?: string;
  /** host:port other services reach the node at. @default the bound host:port */
  advertise?: string;
  /** Heartbeat period, in ms. @default 1000 */
  heartbeatMs?: number;
}

/** What a node advertises besides its role and address. */
export interface NodeAdvert {
  /** $/h; 0 = unknown. */
  pricePerHour: number;
  /** NodeProfile proto JSON, when the node has a profile. */
  profile?: unknown;
}

/**
 * Wraps a node's service so that it registers in the node registry once it
 * serves and deregisters before it stops: `start()` starts the node, asks
 * `describe` for its price and profile (e.g. from its own Info) and
 * registers it under `advertise` (default: the bound address); `drain()`
 * and `close()` deregister first (a failure is logged, not thrown), so
 * watchers see "left" while the node still answers. Without `o.nats` the
 * service is returned as it is.
 * @throws (from `start()`) NatsError naming the servers and the bucket when
 *   registering fails; the node is closed then. RangeError (at once) when
 *   `advertise` is not host:port.
 */
export function withRegistration<S extends Service>(
  service: S,
  role: RegistryRole,
  o: NodeRegistryOptions,
  describe: (address: string) => Promise<NodeAdvert>,
  log: (line: string) => void = (line) => process.stderr.write(line + "\n"),
): Service {
  const nats = o.nats;
  if (nats === undefined || nats.trim() === "") return service;
  if (o.advertise !== undefined && !/^[^\s:]+:\d{1,5}$/.test(o.advertise)) {
    throw new RangeError(`advertise: "${o.advertise}" is not host:port`);
  }
  let registration: NodeRegistration | undefined;
  const deregister = async () => {
    const r = registration;
    registration = undefined;
    if (!r) return;
    try {
      await r.deregister();
      log(`${role}: deregistered ${r.key} from bucket "${r.bucket}"`);
    } catch (e) {
      log(`${role}: ${(e as Error).message}`);
    }
  };
  return withCompanion(service, {
    async afterStart() {
      const advert = await describe(service.address);
      registration = await registerNode({
        nats,
        prefix: o.natsPrefix,
        role,
        address: o.advertise ?? service.address,
        pricePerHour: advert.pricePerHour,
        profile: advert.profile,
        heartbeatMs: o.heartbeatMs,
        log,
      });
      log(`${role}: registered ${registration.key} in bucket "${registration.bucket}" at ${redactNatsServers(nats)}`);
    },
    beforeStop: deregister,
  });
}
