/**
 * A grpc-js server with the standard health service, bound to a host:port
 * (port 0 picks a free port) with the process's transport security, and a
 * shutdown that drains before forcing.
 */
import {
  Server,
  addHealth,
  setHealth,
  defaultChannelOptions,
  serverCredentials,
  transportSecurity,
  type TransportSecurity,
} from "@tessera/proto";
import type { HealthImplementation } from "grpc-health-check";
import { callerRoleCheck } from "./caller-roles.js";

/** A bound gRPC server of one Tessera role. */
export interface GrpcServer {
  readonly server: Server;
  /** host:port actually bound (the real port when 0 was asked for). */
  readonly address: string;
  /** Marks every service NOT_SERVING, then waits up to `graceMs` for calls to finish, then forces. */
  shutdown(graceMs: number): Promise<void>;
}

/** How {@link startGrpcServer} secures its port. */
export interface ServerSecurity {
  /** TLS identity or plaintext. @default the process's ({@link transportSecurity}) */
  security?: TransportSecurity;
  /**
   * With TLS, refuse clients without a certificate the CA signed (mutual
   * TLS) and check each call's caller role (caller-roles.ts). A
   * coordinator that authenticates tenants by bearer token turns it off.
   * @default true
   */
  requireClientCert?: boolean;
}

/**
 * Creates a server, lets `register` add services to it, adds grpc.health.v1
 * for `serviceNames`, and binds `host:port` with `secure`'s credentials
 * (mutual TLS, or plaintext on loopback only). On mutual TLS every call
 * is refused PERMISSION_DENIED unless its caller's certificate has a role
 * that may call its RPC ({@link callerRoleCheck}). Messages over
 * `maxReceiveBytes` are refused RESOURCE_EXHAUSTED before decoding.
 * @throws Error naming the address when the port cannot be bound.
 * @throws TransportSecurityError when plaintext is asked for a host off loopback.
 */
export async function startGrpcServer(
  host: string,
  port: number,
  serviceNames: readonly string[],
  register: (server: Server) => void,
  maxReceiveBytes: number = defaultChannelOptions["grpc.max_receive_message_length"] ?? 2 ** 30,
  secure: ServerSecurity = {},
): Promise<GrpcServer> {
  const security = secure.security ?? transportSecurity();
  const requireClientCert = secure.requireClientCert ?? true;
  const mutual = security.kind === "tls" && requireClientCert;
  const credentials = serverCredentials(security, host, requireClientCert);
  const server = new Server({
    "grpc.max_receive_message_length": maxReceiveBytes,
    "grpc.max_send_message_length": defaultChannelOptions["grpc.max_send_message_length"],
    // Mutual TLS: each call's caller must have a role its RPC allows (caller-roles.ts).
    ...(mutual ? { interceptors: [callerRoleCheck()] } : {}),
  });
  register(server);
  const health: HealthImplementation = addHealth(server, serviceNames);
  const bound = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, credentials, (err, p) =>
      err ? reject(new Error(`cannot listen on ${host}:${port}: ${err.message}`, { cause: err })) : resolve(p),
    );
  });
  let closed: Promise<void> | undefined;
  return {
    server,
    address: `${host}:${bound}`,
    shutdown(graceMs: number) {
      closed ??= new Promise<void>((resolve) => {
        setHealth(health, serviceNames, "NOT_SERVING");
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      return closed;
    },
  };
}
