/**
 * One way to open a NATS connection for every Tessera role (coordinator,
 * nodes, CLI job commands): reconnect forever, errors naming the servers.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import { TesseraError } from "@tessera/core";

/** A NATS operation failed; names the servers (and the bucket or stream when there is one). */
export class NatsError extends TesseraError {
  override name = "NatsError";
  constructor(
    /** The servers as given, e.g. "127.0.0.1:4222". */
    readonly servers: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    const why = options?.cause instanceof Error ? `: ${options.cause.message}` : "";
    super(`NATS at ${servers}: ${message}${why}`, options);
    this.rpcCode = 14; // gRPC UNAVAILABLE
  }
}

/** Options of {@link connectNats}. */
export interface ConnectNatsOptions {
  /** Comma-separated NATS servers, e.g. "127.0.0.1:4222" or "nats://a:4222,nats://b:4222". */
  servers: string;
  /** Connection name shown by the server (e.g. "tessera-coordinator"). */
  name: string;
  /** How long the first connection may take, in ms. @default 5000 */
  timeoutMs?: number;
  /** Delay between reconnect attempts, in ms. @default 250 */
  reconnectTimeWaitMs?: number;
  /**
   * Further nats.js connection options (credentials, TLS) merged in; they
   * cannot change the servers or the name.
   */
  extra?: Omit<NodeConnectionOptions, "servers" | "name">;
}

/** Splits "a:4222, b:4222" into ["a:4222", "b:4222"]. @throws NatsError when there is none. */
export function natsServerList(servers: string): string[] {
  const list = servers
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (list.length === 0) throw new NatsError(JSON.stringify(servers), "no NATS server given");
  return list;
}

/**
 * Connects to NATS. Once connected, the client reconnects forever
 * (maxReconnectAttempts -1, `reconnectTimeWaitMs` between attempts), so a
 * NATS restart does not end the connection; the first connection must
 * succeed within `timeoutMs`.
 * @returns the open connection; close it with `await nc.close()`.
 * @throws NatsError naming the servers when none answers (or refuses the credentials).
 */
export async function connectNats(o: ConnectNatsOptions): Promise<NatsConnection> {
  const servers = natsServerList(o.servers);
  try {
    return await connect({
      ...o.extra,
      servers,
      name: o.name,
      timeout: o.timeoutMs ?? 5000,
      maxReconnectAttempts: -1,
      reconnectTimeWait: o.reconnectTimeWaitMs ?? 250,
    });
  } catch (e) {
    throw new NatsError(servers.join(","), `cannot connect (as ${o.name})`, { cause: e });
  }
}
