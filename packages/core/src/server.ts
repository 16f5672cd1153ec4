/**
 * A grpc-js server with the standard health service, bound to a host:port
 * (port 0 picks a free port), and a shutdown that drains before forcing.
 */
import { Server, ServerCredentials, addHealth, setHealth, defaultChannelOptions } from "@tessera/proto";
import type { HealthImplementation } from "grpc-health-check";

/** A bound gRPC server of one Tessera role. */
export interface GrpcServer {
  readonly server: Server;
  /** host:port actually bound (the real port when 0 was asked for). */
  readonly address: string;
  /** Marks every service NOT_SERVING, then waits up to `graceMs` for calls to finish, then forces. */
  shutdown(graceMs: number): Promise<void>;
}

/**
 * Creates a server, lets `register` add services to it, adds grpc.health.v1
 * for `serviceNames`, and binds `host:port`. Messages over `maxReceiveBytes`
 * are refused RESOURCE_EXHAUSTED before decoding.
 * @throws Error naming the address when the port cannot be bound.
 */
export async function startGrpcServer(
  host: string,
  port: number,
  serviceNames: readonly string[],
  register: (server: Server) => void,
  maxReceiveBytes: number = defaultChannelOptions["grpc.max_receive_message_length"] ?? 2 ** 30,
): Promise<GrpcServer> {
  const server = new Server({
    "grpc.max_receive_message_length": maxReceiveBytes,
    "grpc.max_send_message_length": defaultChannelOptions["grpc.max_send_message_length"],
  });
  register(server);
  const health: HealthImplementation = addHealth(server, serviceNames);
  const bound = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, ServerCredentials.createInsecure(), (err, p) =>
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
