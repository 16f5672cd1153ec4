/**
 * The building blocks every command's flags are made of: value parsers,
 * the transport, NATS and metrics flag groups, and the signal-aware runner
 * of a command's work.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { parseByteSize, parseDuration } from "@tessera/core";
import { COORDINATOR_DEFAULTS } from "@tessera/coordinator";

/** Parser of an integer flag >= `min`. @throws InvalidArgumentError otherwise (a usage error, exit 2). */
export const int =
  (name: string, min = 0) =>
  (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
/** Parser of a finite number flag in [min, max]. @throws InvalidArgumentError otherwise. */
export const num = (name: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max)
    throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
  return n;
};
/** A flag parser from a strict option parser (ConfigError naming the flag becomes commander's InvalidArgumentError). */
const flagParser =
  <T>(parse: (name: string, v: string) => T) =>
  (name: string) =>
  (v: string): T => {
    try {
      return parse(name, v);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
/** Parser of a byte-size flag ("64MiB", "1GiB", bytes). @throws InvalidArgumentError when malformed. */
export const size = flagParser(parseByteSize);
/** Parser of a duration flag ("30d", "12h", "90s", ms). @throws InvalidArgumentError when malformed. */
export const duration = flagParser(parseDuration);
/** Parser of a repeatable, comma-separated flag: the values so far plus this one's. */
export const list = (v: string, prev: string[] = []) => [...prev, ...v.split(",").filter(Boolean)];

/** Transport security (issue 5): TLS files, or --plaintext asked for explicitly (loopback only). */
export const transport = (c: Command, who: "service" | "client") =>
  c
    .addOption(
      new Option("--tls-ca <file>", "CA certificate (PEM) the peers' certificates must be signed by").env(
        "TESSERA_TLS_CA",
      ),
    )
    .addOption(
      new Option(
        "--tls-cert <file>",
        who === "service"
          ? "this process's certificate (PEM) with its role; `tessera certs` writes <role>.pem, e.g. gpu-node.pem"
          : "client certificate (PEM) for a coordinator that asks for one (no --tokens)",
      ).env("TESSERA_TLS_CERT"),
    )
    .addOption(new Option("--tls-key <file>", "the certificate's private key (PEM)").env("TESSERA_TLS_KEY"))
    .addOption(
      new Option("--plaintext", "no TLS: allowed only on loopback addresses (127.0.0.0/8, ::1, localhost)").env(
        "TESSERA_PLAINTEXT",
      ),
    );
/** A client of the coordinator: transport security and a tenant's bearer token. */
export const coordinatorClient = (c: Command) =>
  transport(c, "client").addOption(
    new Option("--token <token>", "bearer token, for a coordinator started with --tokens").env("TESSERA_TOKEN"),
  );
/** The coordinator a cluster command asks (required; TESSERA_CLUSTER as for every command with --cluster). */
export const clusterOption = () =>
  new Option("--cluster <host:port>", "coordinator address").makeOptionMandatory().env("TESSERA_CLUSTER");
/** The transport and NATS security checks, loaded when a command runs. */
export const security = () => import("./security.js");
/** A Prometheus scrape endpoint (issue 6) on every service. */
export const metricsPort = () =>
  new Option(
    "--metrics-port <port>",
    "serve Prometheus metrics at http://<host>:<port>/metrics (0 = a free port; off when unset)",
  )
    .argParser(int("--metrics-port"))
    .env("TESSERA_METRICS_PORT");
/** The prefix of every NATS name (buckets, streams), on every command with --nats. */
export const natsPrefix = () =>
  new Option("--nats-prefix <prefix>", "prefix of the NATS buckets and streams")
    .default(COORDINATOR_DEFAULTS.natsPrefix)
    .env("TESSERA_NATS_PREFIX");
/** NATS credentials and TLS (issue 5), for every command with --nats. Secrets are best given by env or file. */
export const natsAuthFlags = (c: Command) =>
  c
    .addOption(new Option("--nats-user <user>", "NATS user name (with --nats-password)").env("TESSERA_NATS_USER"))
    .addOption(new Option("--nats-password <password>", "NATS password").env("TESSERA_NATS_PASSWORD"))
    .addOption(new Option("--nats-token <token>", "NATS authentication token").env("TESSERA_NATS_TOKEN"))
    .addOption(new Option("--nats-nkey <file>", "file holding an NKEY user seed (SU...)").env("TESSERA_NATS_NKEY"))
    .addOption(
      new Option("--nats-creds <file>", "NATS .creds file (user JWT and seed, decentralised auth)").env(
        "TESSERA_NATS_CREDS",
      ),
    )
    .addOption(new Option("--nats-ca <file>", "CA certificate (PEM) of a TLS NATS server").env("TESSERA_NATS_CA"))
    .addOption(
      new Option("--nats-cert <file>", "client certificate (PEM) for NATS mutual TLS").env("TESSERA_NATS_CERT"),
    )
    .addOption(new Option("--nats-key <file>", "its private key (PEM)").env("TESSERA_NATS_KEY"));

/** Commands running under {@link withSignals}, stopped when stdout's reader goes away. */
const running = new Set<AbortController>();
let stdoutClosed = false;

/**
 * Makes a closed stdout (EPIPE: `tessera jobs | head -1`) end the command
 * quietly: a command running under {@link withSignals} is stopped as by
 * SIGTERM (an embedded cluster still stops in order) and exits 0, with no
 * message, as ripgrep does: the reader had all it wanted. Other commands
 * (the roles' servers) drop what they would still write. Any other error
 * on stdout is thrown, as before.
 */
export function endQuietlyWhenStdoutCloses(): void {
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE" && err.code !== "ERR_STREAM_DESTROYED") throw err;
    stdoutClosed = true;
    for (const abort of running) abort.abort();
  });
}

/**
 * Runs `fn` with an AbortSignal that SIGINT/SIGTERM (and a closed stdout,
 * see {@link endQuietlyWhenStdoutCloses}) abort; a second signal exits at
 * once. Exits with fn's code, 130 when interrupted, 0 when stdout closed.
 */
export async function withSignals(fn: (signal: AbortSignal) => Promise<number>): Promise<void> {
  const abort = new AbortController();
  const onSignal = (sig: string) => {
    if (abort.signal.aborted) process.exit(130);
    process.stderr.write(`\n${sig}: stopping (again to force)\n`);
    abort.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  running.add(abort);
  try {
    process.exitCode = await fn(abort.signal);
  } catch (err) {
    if (!stdoutClosed) process.stderr.write(`tessera: ${(err as Error).message}\n`);
    process.exitCode = abort.signal.aborted ? 130 : 1;
  } finally {
    running.delete(abort);
  }
  if (stdoutClosed) process.exitCode = 0;
}
