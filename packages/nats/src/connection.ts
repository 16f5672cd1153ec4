/**
 * One way to open a NATS connection for every Tessera role (coordinator,
 * nodes, CLI job commands): reconnect forever, errors naming the servers,
 * and the process-wide credentials and TLS set once at startup
 * ({@link setNatsAuth}, {@link setNatsTls}) so that no call site threads them.
 */
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import {
  AuthorizationError,
  ClosedConnectionError,
  ConnectionError,
  DrainingConnectionError,
  NoRespondersError,
  RequestError,
  TimeoutError,
  UserAuthenticationExpiredError,
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  nkeys,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
  type Authenticator,
  type NatsConnection,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import { ConfigError, TesseraError } from "@tessera/core";
import { natsServerCredentials, redactNatsServers } from "./server-urls.js";

/** Prefix of every NATS name Tessera uses (buckets, streams, subjects) unless told otherwise. */
export const DEFAULT_NATS_PREFIX = "tessera";

/**
 * A NATS operation failed; names the servers (and the bucket or stream when
 * there is one), with any credentials in their URLs redacted.
 */
export class NatsError extends TesseraError {
  override name = "NatsError";
  /** The servers as given, e.g. "127.0.0.1:4222", userinfo replaced by "***" ({@link redactNatsServers}). */
  readonly servers: string;
  constructor(servers: string, message: string, options?: { cause?: unknown }) {
    const shown = redactNatsServers(servers);
    const why = options?.cause instanceof Error ? `: ${options.cause.message}` : "";
    super(`NATS at ${shown}: ${message}${why}`, options);
    this.servers = shown;
    this.rpcCode = 14; // gRPC UNAVAILABLE
  }
}

/** The NATS server refused this process's credentials (or they expired); retrying will not help. */
export class NatsAuthError extends NatsError {
  override name = "NatsAuthError";
  constructor(servers: string, message: string, options?: { cause?: unknown }) {
    super(servers, message, options);
    this.rpcCode = 16; // gRPC UNAUTHENTICATED
  }
}

/** How this process authenticates to NATS. */
export type NatsAuth =
  | { kind: "none" }
  | { kind: "user"; user: string; password: string }
  | { kind: "token"; token: string }
  /** A file holding an NKEY user seed ("SU..."). */
  | { kind: "nkey"; seedFile: string }
  /** A NATS .creds file (user JWT + seed; decentralised auth). */
  | { kind: "creds"; credsFile: string };

/** Optional TLS to NATS: the CA that signed the server's certificate, and a client certificate and key for NATS mTLS. */
export interface NatsTls {
  /** PEM file of the CA(s) to trust for the server certificate. */
  caFile: string;
  /** PEM client certificate (mTLS); needs `keyFile`. */
  certFile?: string;
  /** PEM private key of `certFile`. */
  keyFile?: string;
}

/** The flag that each kind of credential comes from, for messages. */
const AUTH_FLAGS = "--nats-user/--nats-password/--nats-token/--nats-nkey/--nats-creds";

let processAuth: NatsAuth = { kind: "none" };
let processTls: NatsTls | undefined;

/**
 * Sets how every later {@link connectNats} in this process authenticates
 * (unless its `extra` carries its own credentials). Files are not read here
 * but at each connect, so a rotated seed or creds file is picked up by the
 * next connection.
 * @throws ConfigError when a field is empty or the kind is unknown.
 */
export function setNatsAuth(auth: NatsAuth): void {
  const need = (option: string, v: unknown): void => {
    if (typeof v !== "string" || v === "") throw new ConfigError(option, "must be a non-empty string");
  };
  switch (auth.kind) {
    case "none":
      break;
    case "user":
      need("--nats-user", auth.user);
      need("--nats-password", auth.password);
      break;
    case "token":
      need("--nats-token", auth.token);
      break;
    case "nkey":
      need("--nats-nkey", auth.seedFile);
      break;
    case "creds":
      need("--nats-creds", auth.credsFile);
      break;
    default:
      throw new ConfigError("NatsAuth.kind", `unknown kind ${JSON.stringify((auth as { kind: unknown }).kind)}`);
  }
  processAuth = { ...auth };
}

/** The process-wide NATS authentication ({ kind: "none" } until {@link setNatsAuth}). */
export function natsAuth(): NatsAuth {
  return { ...processAuth };
}

/**
 * Sets (or, with undefined, clears) the TLS that every later
 * {@link connectNats} in this process uses (unless its `extra` has `tls`).
 * The PEM files are read at each connect.
 * @throws ConfigError when only one of certFile/keyFile is given or a path is empty.
 */
export function setNatsTls(tls: NatsTls | undefined): void {
  if (tls !== undefined) checkTls(tls);
  processTls = tls === undefined ? undefined : { ...tls };
}

/** @throws ConfigError naming the flag when a path is empty or only one of certFile/keyFile is given. */
function checkTls(tls: NatsTls): void {
  if (!tls.caFile) throw new ConfigError("--nats-ca", "must be a non-empty path");
  if (tls.certFile === "") throw new ConfigError("--nats-cert", "must be a non-empty path");
  if (tls.keyFile === "") throw new ConfigError("--nats-key", "must be a non-empty path");
  if (tls.certFile !== undefined && tls.keyFile === undefined) {
    throw new ConfigError("--nats-cert", "needs --nats-key (the client certificate's private key)");
  }
  if (tls.keyFile !== undefined && tls.certFile === undefined) {
    throw new ConfigError("--nats-key", "needs --nats-cert (the client certificate)");
  }
}

/** The process-wide NATS TLS settings, or undefined (plain TCP unless the server URL says tls://). */
export function natsTls(): NatsTls | undefined {
  return processTls === undefined ? undefined : { ...processTls };
}

/** CLI-style NATS credential flags (all optional; at most one kind). */
export interface NatsAuthFlags {
  natsUser?: string;
  natsPassword?: string;
  natsToken?: string;
  /** Path of an NKEY user seed file. */
  natsNkey?: string;
  /** Path of a NATS .creds file. */
  natsCreds?: string;
}

/**
 * Builds a {@link NatsAuth} from CLI-style flags: none given → { kind: "none" }.
 * The seed or creds file is read once here to fail early on a bad path (and
 * again at each connect).
 * @throws ConfigError naming the flag when a value is empty, --nats-user and
 *   --nats-password are not given together, two kinds are given, or a file
 *   cannot be read or does not hold what it should.
 */
export function natsAuthFromFlags(f: NatsAuthFlags): NatsAuth {
  const given = (
    [
      ["--nats-user", f.natsUser],
      ["--nats-password", f.natsPassword],
      ["--nats-token", f.natsToken],
      ["--nats-nkey", f.natsNkey],
      ["--nats-creds", f.natsCreds],
    ] as const
  ).filter(([, v]) => v !== undefined);
  for (const [flag, v] of given) if (v === "") throw new ConfigError(flag, "is empty");
  if (f.natsUser !== undefined && f.natsPassword === undefined) {
    throw new ConfigError("--nats-user", "needs --nats-password");
  }
  if (f.natsPassword !== undefined && f.natsUser === undefined) {
    throw new ConfigError("--nats-password", "needs --nats-user");
  }
  const kinds = given.map(([flag]) => flag).filter((flag) => flag !== "--nats-password");
  if (kinds.length > 1) {
    throw new ConfigError(kinds[1]!, `cannot be combined with ${kinds[0]} (give one kind of NATS credentials)`);
  }
  if (f.natsUser !== undefined) return { kind: "user", user: f.natsUser, password: f.natsPassword! };
  if (f.natsToken !== undefined) return { kind: "token", token: f.natsToken };
  if (f.natsNkey !== undefined) {
    const problem = seedProblem(f.natsNkey, readOrWhy(f.natsNkey));
    if (problem) throw new ConfigError("--nats-nkey", problem);
    return { kind: "nkey", seedFile: f.natsNkey };
  }
  if (f.natsCreds !== undefined) {
    const problem = credsProblem(f.natsCreds, readOrWhy(f.natsCreds));
    if (problem) throw new ConfigError("--nats-creds", problem);
    return { kind: "creds", credsFile: f.natsCreds };
  }
  return { kind: "none" };
}

/** CLI-style NATS TLS flags. */
export interface NatsTlsFlags {
  natsCa?: string;
  natsCert?: string;
  natsKey?: string;
}

/** The files of a NATS TLS setting, each with the flag that names it. */
function tlsFiles(tls: NatsTls): [flag: string, file: string][] {
  const files: [string, string | undefined][] = [
    ["--nats-ca", tls.caFile],
    ["--nats-cert", tls.certFile],
    ["--nats-key", tls.keyFile],
  ];
  return files.filter((f): f is [string, string] => f[1] !== undefined);
}

/**
 * Builds {@link NatsTls} from CLI-style flags: none given → undefined.
 * @throws ConfigError naming the flag when --nats-cert/--nats-key come without
 *   --nats-ca or without each other, or a file cannot be read.
 */
export function natsTlsFromFlags(f: NatsTlsFlags): NatsTls | undefined {
  if (f.natsCa === undefined && f.natsCert === undefined && f.natsKey === undefined) return undefined;
  if (f.natsCa === undefined)
    throw new ConfigError(f.natsCert !== undefined ? "--nats-cert" : "--nats-key", "needs --nats-ca");
  const tls: NatsTls = { caFile: f.natsCa };
  if (f.natsCert !== undefined) tls.certFile = f.natsCert;
  if (f.natsKey !== undefined) tls.keyFile = f.natsKey;
  checkTls(tls);
  for (const [flag, file] of tlsFiles(tls)) {
    const r = readOrWhy(file);
    if (typeof r === "string") throw new ConfigError(flag, r);
  }
  return tls;
}

/** The file's bytes, or why it cannot be read (naming the file). */
function readOrWhy(file: string): Uint8Array | string {
  try {
    return readFileSync(file);
  } catch (e) {
    return `cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/** Why `data` (read from `file`, or the read error) is not an NKEY user seed; undefined when it is. */
function seedProblem(file: string, data: Uint8Array | string): string | undefined {
  if (typeof data === "string") return data;
  const seed = new TextDecoder().decode(data).trim();
  if (!seed.startsWith("SU")) return `${file} does not hold an NKEY user seed (a line starting "SU")`;
  try {
    nkeys.fromSeed(new TextEncoder().encode(seed));
  } catch (e) {
    return `${file} holds an invalid NKEY seed: ${e instanceof Error ? e.message : String(e)}`;
  }
  return undefined;
}

/** Why `data` (read from `file`, or the read error) is not a NATS .creds file; undefined when it is. */
function credsProblem(file: string, data: Uint8Array | string): string | undefined {
  if (typeof data === "string") return data;
  const text = new TextDecoder().decode(data);
  if (!/-{3,}BEGIN NATS USER JWT-{3,}/.test(text) || !/-{3,}BEGIN USER NKEY SEED-{3,}/.test(text)) {
    return `${file} is not a NATS .creds file (needs a NATS USER JWT and a USER NKEY SEED block)`;
  }
  return undefined;
}

/** The file's bytes, or why not; async for connect time. */
async function readAtConnect(file: string): Promise<Uint8Array | string> {
  try {
    return await readFile(file);
  } catch (e) {
    return `cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/** Who this process says it is, without secrets, for error messages. */
function describeAuth(auth: NatsAuth): string {
  switch (auth.kind) {
    case "none":
      return "no credentials";
    case "user":
      return `user ${JSON.stringify(auth.user)}`;
    case "token":
      return "a token";
    case "nkey":
      return `the NKEY seed in ${auth.seedFile}`;
    case "creds":
      return `the creds file ${auth.credsFile}`;
  }
}

/**
 * The nats.js authenticator of `auth`, reading its file now.
 * @throws NatsError naming the servers and the file when it cannot be read or is not valid.
 */
async function authenticatorOf(auth: NatsAuth, servers: string): Promise<Authenticator | undefined> {
  switch (auth.kind) {
    case "none":
      return undefined;
    case "user":
      return usernamePasswordAuthenticator(auth.user, auth.password);
    case "token":
      return tokenAuthenticator(auth.token);
    case "nkey": {
      const data = await readAtConnect(auth.seedFile);
      const problem = seedProblem(auth.seedFile, data);
      if (problem) throw new NatsError(servers, `--nats-nkey: ${problem}`);
      return nkeyAuthenticator(new TextEncoder().encode(new TextDecoder().decode(data as Uint8Array).trim()));
    }
    case "creds": {
      const data = await readAtConnect(auth.credsFile);
      const problem = credsProblem(auth.credsFile, data);
      if (problem) throw new NatsError(servers, `--nats-creds: ${problem}`);
      return credsAuthenticator(data as Uint8Array);
    }
  }
}

/** Options of {@link connectNats}. */
export interface ConnectNatsOptions {
  /**
   * Comma-separated NATS servers, e.g. "127.0.0.1:4222" or
   * "nats://a:4222,nats://b:4222"; "nats://user:password@a:4222" or
   * "nats://token@a:4222" carry the credentials ({@link natsServerCredentials}).
   */
  servers: string;
  /** Connection name shown by the server (e.g. "tessera-coordinator"). */
  name: string;
  /** How long the first connection may take, in ms. @default 5000 */
  timeoutMs?: number;
  /** Delay between reconnect attempts, in ms. @default 250 */
  reconnectTimeWaitMs?: number;
  /**
   * Further nats.js connection options merged over the process-wide
   * credentials and TLS: credentials here (authenticator, user, pass,
   * token) replace {@link natsAuth} entirely, `tls` here replaces
   * {@link natsTls}. They cannot change the servers or the name.
   */
  extra?: Omit<NodeConnectionOptions, "servers" | "name">;
}

/**
 * Splits "a:4222, b:4222" into ["a:4222", "b:4222"], userinfo taken out of
 * each ({@link natsServerCredentials}).
 * @throws NatsError when there is none; ConfigError naming --nats as natsServerCredentials.
 */
export function natsServerList(servers: string): string[] {
  const list = natsServerCredentials(servers).servers;
  if (list.length === 0) throw new NatsError(JSON.stringify(servers), "no NATS server given");
  return list;
}

/** Whether `e` (or an error in its cause chain) is nats.js saying the server refused or expired the credentials. */
function isAuthRefusal(e: unknown): boolean {
  for (let x: unknown = e, depth = 0; x instanceof Error && depth < 5; x = x.cause, depth++) {
    if (x instanceof AuthorizationError || x instanceof UserAuthenticationExpiredError) return true;
    if (/authorization violation|authentication expired|authentication timeout/i.test(x.message)) return true;
  }
  return false;
}

/**
 * Connects to NATS with the process-wide credentials ({@link setNatsAuth})
 * and TLS ({@link setNatsTls}), `o.extra` winning over both; credentials in
 * the server URLs ({@link natsServerCredentials}) are used when neither
 * gives any. Seed, creds and
 * TLS files are read now. Once connected, the client reconnects forever
 * (maxReconnectAttempts -1, `reconnectTimeWaitMs` between attempts), so a
 * NATS restart does not end the connection; the first connection must
 * succeed within `timeoutMs`, and a refusal of the credentials fails at once
 * (each server is tried once on the first connection).
 * @returns the open connection; close it with `await nc.close()`.
 * @throws ConfigError naming --nats (never the credentials) when the URLs
 *   carry credentials as well as {@link setNatsAuth} or `extra`, or bad ones;
 *   NatsAuthError naming the servers when the server refuses the credentials;
 *   NatsError naming the servers when none answers, or naming the file when a
 *   seed, creds or TLS file cannot be read.
 */
export async function connectNats(o: ConnectNatsOptions): Promise<NatsConnection> {
  const { servers, auth: urlAuth } = natsServerCredentials(o.servers);
  if (servers.length === 0) throw new NatsError(JSON.stringify(o.servers), "no NATS server given");
  const where = servers.join(",");
  const extra = o.extra ?? {};
  const extraHasAuth = ["authenticator", "user", "pass", "token"].some(
    (k) => (extra as Record<string, unknown>)[k] !== undefined,
  );
  let auth: NatsAuth = extraHasAuth ? { kind: "none" } : processAuth;
  if (urlAuth.kind !== "none") {
    if (extraHasAuth || processAuth.kind !== "none") {
      const other = extraHasAuth ? "credentials in extra" : AUTH_FLAGS;
      throw new ConfigError("--nats", `credentials in a server URL cannot be combined with ${other} (give one)`);
    }
    auth = urlAuth;
  }
  const defaults: Omit<NodeConnectionOptions, "servers" | "name"> = {};
  const authenticator = await authenticatorOf(auth, where);
  if (authenticator) defaults.authenticator = authenticator;
  if (processTls && !("tls" in extra)) {
    const tls = processTls;
    for (const [flag, file] of tlsFiles(tls)) {
      const r = await readAtConnect(file);
      if (typeof r === "string") throw new NatsError(where, `${flag}: ${r}`);
    }
    defaults.tls = {
      caFile: tls.caFile,
      ...(tls.certFile !== undefined ? { certFile: tls.certFile } : {}),
      ...(tls.keyFile !== undefined ? { keyFile: tls.keyFile } : {}),
    };
  }
  try {
    return await connect({
      ...defaults,
      ...extra,
      servers,
      name: o.name,
      timeout: o.timeoutMs ?? 5000,
      maxReconnectAttempts: -1,
      reconnectTimeWait: o.reconnectTimeWaitMs ?? 250,
    });
  } catch (e) {
    if (isAuthRefusal(e)) {
      const who = extraHasAuth
        ? "the credentials given in extra"
        : `${describeAuth(auth)}${urlAuth.kind !== "none" ? " from the server URL" : ""}`;
      throw new NatsAuthError(
        where,
        `authorization violation: check ${AUTH_FLAGS} (connecting as ${o.name} with ${who})`,
        { cause: e },
      );
    }
    throw new NatsError(where, `cannot connect (as ${o.name})`, { cause: e });
  }
}

/**
 * Whether `err` is NATS being out of reach rather than anything wrong with
 * the work: a request that timed out or was dropped at a disconnect, no
 * responders (JetStream not back yet), a closed or draining connection.
 * Work that failed for one of these is handed back, not failed.
 */
export function isNatsOutage(err: unknown): boolean {
  return (
    err instanceof TimeoutError ||
    err instanceof RequestError ||
    err instanceof NoRespondersError ||
    err instanceof ConnectionError ||
    err instanceof ClosedConnectionError ||
    err instanceof DrainingConnectionError ||
    (err instanceof NatsError && !(err instanceof NatsAuthError))
  );
}
