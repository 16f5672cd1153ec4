/** Process entry of a gpu-node: serves until SIGINT/SIGTERM. */
import { defaultNodeId, withTelemetry, type ServeMetricsOptions } from "@tessera/telemetry";
import { runUntilSignal } from "@tessera/core";
import { readNodeAdvert } from "@tessera/rpc";
import { withRegistration, type NodeRegistryOptions } from "@tessera/nats";
import { createGpuNode } from "./gpu-node.js";
import type { GpuNodeOptions } from "./options.js";

/**
 * Runs a gpu-node as this process's main service until a signal stops it.
 * With `registry.nats` it registers in the NATS node registry once it
 * serves (price and profile from its own Info), heartbeats, and
 * deregisters on SIGINT/SIGTERM before the server stops.
 * @throws ConfigError naming a bad option; Error when the port cannot be
 *   bound; NatsError naming the servers when registering fails.
 * Serves metrics first when `metrics.port` or TESSERA_METRICS_PORT says so
 * ({@link serveMetrics}: Prometheus text at http://<host>:<port>/metrics).
 * Then starts OpenTelemetry tracing ({@link startTelemetry}: OTEL_* variables,
 * service name "tessera-gpu-node") and flushes it once the service has stopped.
 */
export async function runGpuNode(
  options: GpuNodeOptions,
  registry: NodeRegistryOptions = {},
  metrics: Pick<ServeMetricsOptions, "port"> = {},
): Promise<void> {
  const who = { serviceName: "tessera-gpu-node", role: "gpu", nodeId: defaultNodeId(options.port) };
  return withTelemetry(who, { host: options.host, metricsPort: metrics.port }, () =>
    runUntilSignal(
      withRegistration(createGpuNode(options), "gpu", registry, (address) => readNodeAdvert("gpu", address)),
    ),
  );
}
