import * as grpc from "@grpc/grpc-js";
import { channelCredentials, transportSecurity, type TransportSecurity } from "./transport.js";
import { HealthImplementation, service as healthService, type ServingStatus } from "grpc-health-check";

export type { ServingStatus };

/**
 * Adds the standard grpc.health.v1 Health service to `server`, with the
 * overall status ("") and one entry per served service name, all SERVING.
 * The caller flips them to NOT_SERVING when it starts draining.
 */
export function addHealth(server: grpc.Server, serviceNames: readonly string[]): HealthImplementation {
  const status: Record<string, ServingStatus> = { "": "SERVING" };
  for (const name of serviceNames) status[name] = "SERVING";
  const health = new HealthImplementation(status);
  health.addToServer(server);
  return health;
}

/** Sets every listed service, and the overall status, to `status`. */
export function setHealth(health: HealthImplementation, serviceNames: readonly string[], status: ServingStatus): void {
  health.setStatus("", status);
  for (const name of serviceNames) health.setStatus(name, status);
}

const HealthClient = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, "Health");

/**
 * Asks `address` for its grpc.health.v1 status of `service` ("" = overall).
 * Resolves "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN", or
 * "UNREACHABLE" when no answer comes within `timeoutMs` (or the
 * connection cannot be secured: plaintext off loopback, a TLS handshake
 * that fails). Secured as `security` (default: the process's).
 */
export function checkHealth(
  address: string,
  service = "",
  timeoutMs = 2000,
  security: TransportSecurity = transportSecurity(),
): Promise<string> {
  let credentials: grpc.ChannelCredentials;
  try {
    credentials = channelCredentials(security, address);
  } catch {
    return Promise.resolve("UNREACHABLE");
  }
  const client = new HealthClient(address, credentials);
  return new Promise((resolve) => {
    const c = client as unknown as {
      check: (
        req: unknown,
        opts: grpc.CallOptions,
        cb: (err: grpc.ServiceError | null, res?: { status: string }) => void,
      ) => void;
    };
    c.check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => {
      client.close();
      resolve(err ? "UNREACHABLE" : (res?.status ?? "UNKNOWN"));
    });
  });
}
