/**
 * An embedded local cluster: one coordinator and one node of each role, each
 * a child process of this one on a free loopback port. Used by `tessera run`
 * without `--cluster`, by the integration tests and by the benchmarks.
 */
import { fork, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_SHUTDOWN_GRACE_MS, NODE_ROLES, ROLES, type ReadyMessage, type Role } from "@tessera/core";
import { cliEntry } from "./paths.js";

/** The roles a local cluster runs: every role of @tessera/core's roles table. */
export type { Role };

/** Options of {@link startLocalCluster}. */
export interface LocalClusterOptions {
  model: string;
  tokenizer: string;
  /** Extra CLI flags per role, e.g. `{ memory: ["--capacity", "64MiB"] }`. */
  flags?: Partial<Record<Role, string[]>>;
  /** Copy the children's logs to this process's stderr. @default false */
  verbose?: boolean;
  /** How long each child may take to become ready, in ms. @default 60000 */
  readyTimeoutMs?: number;
  /**
   * NATS node registry: the nodes register in `${prefix}-nodes` at
   * `servers` and the coordinator takes them from there (it is given no
   * node addresses). @default none (the coordinator is given the addresses)
   */
  nats?: { servers: string; prefix: string };
  /**
   * Transport security flags every process gets, e.g. `["--tls-ca", ca,
   * "--tls-cert", cert, "--tls-key", key]`. @default ["--plaintext"]: the
   * processes listen on loopback only
   */
  transport?: string[];
  /**
   * Aborts the start (SIGTERM to `tessera run` while its cluster starts):
   * everything already started is stopped and startLocalCluster rejects.
   */
  signal?: AbortSignal;
}

/** A running child process of one role. */
export interface RoleProcess {
  role: Role;
  address: string;
  child: ChildProcess;
  /** Last lines it wrote to stderr. */
  logTail(): string;
}

/** A running local cluster. */
export interface LocalCluster {
  /** The coordinator's address. */
  readonly address: string;
  /** Directory holding the storage-node's data; removed by stop(). */
  readonly dir: string;
  node(role: Role): RoleProcess;
  /** Kills a role's process with SIGKILL (no drain), for failure tests. */
  kill(role: Role): Promise<void>;
  /** Starts a killed role again on the same port with the same flags and data. */
  restart(role: Role): Promise<void>;
  /**
   * SIGTERM to every process, SIGKILL after `shutdownGraceMs` (default
   * DEFAULT_SHUTDOWN_GRACE_MS of @tessera/core), then removes `dir`. Idempotent.
   */
  stop(shutdownGraceMs?: number): Promise<void>;
}

const TAIL_BYTES = 8192;
/** How long a child SIGKILLed at stop() may take to exit, in ms. */
const KILLED_EXIT_MS = 5000;

function spawnRole(
  role: Role,
  args: string[],
  verbose: boolean,
  readyTimeoutMs: number,
  tmp: string,
  spawned: Set<ChildProcess>,
): Promise<RoleProcess> {
  // execArgv: [] so children run the built JS directly, not under a test
  // runner's loaders. TMPDIR: onnxruntime leaves a file per process in the
  // temp directory; the cluster's own directory is removed when it stops.
  const child = fork(cliEntry, args, {
    stdio: ["ignore", "ignore", "pipe", "ipc"],
    env: { ...childEnv(), TMPDIR: tmp },
    execArgv: [],
    // Own process group: a terminal's Ctrl-C reaches only `tessera run`,
    // which then stops its children in order (SIGTERM, drain, exit).
    detached: true,
  });
  // Known to stop() from now on, not only once ready: a start that fails
  // or is interrupted must stop the siblings still starting too.
  spawned.add(child);
  let tail = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    tail = (tail + chunk).slice(-TAIL_BYTES);
    if (verbose) process.stderr.write(chunk.replace(/^(?=.)/gm, `[${role}] `));
  });
  const logTail = () => tail;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${role}-node did not become ready in ${readyTimeoutMs} ms:\n${tail}`));
    }, readyTimeoutMs);
    child.on("message", (msg: ReadyMessage) => {
      if (msg?.type !== "ready") return;
      clearTimeout(timer);
      resolve({ role, address: msg.address, child, logTail });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${role} process exited (${signal ?? code}) before it was ready:\n${tail}`));
    });
  });
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/**
 * This process's environment without the TESSERA_* security, NATS and
 * HTTP-port settings: the cluster's processes take theirs from their flags
 * (a user's TESSERA_TLS_* for `tessera run --cluster` must not reach an
 * embedded cluster started with --plaintext; `tessera serve`'s
 * TESSERA_HTTP_PORT reaches its coordinator as --http-port, and a
 * `tessera run` coordinator serves no HTTP). A TESSERA_METRICS_PORT becomes 0: one
 * fixed port would have every child bind the same one (the second fails to
 * start); each takes a free port of its own instead.
 */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (/^TESSERA_(TLS_|PLAINTEXT$|TOKENS_FILE$|TOKEN$|HTTP_PORT$|NATS)/.test(k)) delete env[k];
  }
  if (env["TESSERA_METRICS_PORT"] !== undefined) env["TESSERA_METRICS_PORT"] = "0";
  return env;
}

/** A promise that rejects when `signal` aborts, and its listener's removal. */
function abortion(signal: AbortSignal | undefined): { promise: Promise<never>; dispose(): void } {
  let dispose = () => {};
  const promise = new Promise<never>((_, reject) => {
    if (!signal) return;
    const onAbort = () => reject(new Error("interrupted while the local cluster started"));
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    dispose = () => signal.removeEventListener("abort", onAbort);
  });
  promise.catch(() => {});
  return { promise, dispose };
}

/** Node flags that skip the self-profile at start (see `tessera node --profile`). */
const NO_PROFILE = ["--profile", "off"] as const;

/**
 * Starts memory-, storage- and gpu-node processes, then a coordinator that
 * knows their addresses. When a child fails to start (or `signal` aborts),
 * every child, started or still starting, is stopped and the directory
 * removed before this rejects.
 * @throws Error with the failing child's log tail, or "interrupted ..." on abort.
 */
export async function startLocalCluster(options: LocalClusterOptions): Promise<LocalCluster> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-"));
  const tmp = join(dir, "tmp");
  await mkdir(tmp);
  const verbose = options.verbose ?? false;
  const timeout = options.readyTimeoutMs ?? 60_000;
  const nats = options.nats ? ["--nats", options.nats.servers, "--nats-prefix", options.nats.prefix] : [];
  // Nodes register with `nats` before their own flags; the coordinator then needs no addresses.
  const transport = options.transport ?? ["--plaintext"];
  const flags = (r: Role) => [...(r === "coordinator" ? [] : nats), ...transport, ...(options.flags?.[r] ?? [])];
  const procs = new Map<Role, RoleProcess>();
  const args = new Map<Role, string[]>();
  // Every child ever forked, ready or not: what stop() stops.
  const spawned = new Set<ChildProcess>();
  const start = async (role: Role, a: string[]) => {
    // Nothing starts once stop() began (an interrupted or failed start).
    if (stopped) throw new Error(`local cluster stopped before the ${role} started`);
    args.set(role, a);
    procs.set(role, await spawnRole(role, a, verbose, timeout, tmp, spawned));
  };
  let stopped: Promise<void> | undefined;
  const cluster: LocalCluster = {
    get address() {
      return procs.get("coordinator")!.address;
    },
    dir,
    node(role) {
      const p = procs.get(role);
      if (!p) throw new Error(`no ${role} process in this cluster`);
      return p;
    },
    async kill(role) {
      const p = cluster.node(role);
      p.child.kill("SIGKILL");
      await waitExit(p.child, 10_000);
    },
    async restart(role) {
      const p = cluster.node(role);
      const port = p.address.slice(p.address.lastIndexOf(":") + 1);
      const a = [
        ...args.get(role)!.filter((_, i, all) => all[i - 1] !== "--port" && all[i] !== "--port"),
        "--port",
        port,
      ];
      procs.set(role, await spawnRole(role, a, verbose, timeout, tmp, spawned));
    },
    stop(shutdownGraceMs = DEFAULT_SHUTDOWN_GRACE_MS) {
      stopped ??= (async () => {
        const children = [...spawned];
        for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
        await Promise.all(
          children.map(async (c) => {
            if (!(await waitExit(c, shutdownGraceMs))) {
              c.kill("SIGKILL");
              await waitExit(c, KILLED_EXIT_MS);
            }
          }),
        );
        await rm(dir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
  const aborted = abortion(options.signal);
  try {
    await Promise.race([startAll(), aborted.promise]);
  } catch (err) {
    await cluster.stop(1000);
    throw err;
  } finally {
    aborted.dispose();
  }
  return cluster;

  async function startAll(): Promise<void> {
    // No self-profile (a second or so per node, on the cores the other
    // nodes are starting on): nothing here plans from it. `flags` may turn
    // it back on (a later --profile wins).
    const dataDir = (r: Role) => (r === "storage" ? ["--data-dir", join(dir, "storage")] : []);
    await Promise.all(
      NODE_ROLES.map((r) => start(r, ["node", ROLES[r].cli, "--port", "0", ...dataDir(r), ...NO_PROFILE, ...flags(r)])),
    );
    await start("coordinator", [
      ROLES.coordinator.cli,
      "--port",
      "0",
      ...(options.nats ? nats : NODE_ROLES.flatMap((r) => [`--${ROLES[r].cli}-node`, procs.get(r)!.address])),
      "--model",
      options.model,
      "--tokenizer",
      options.tokenizer,
      ...flags("coordinator"),
    ]);
  }
}
