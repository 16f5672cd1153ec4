import { defaultNodeId, withTelemetry, type ServeMetricsOptions } from "@tessera/telemetry";
import { runUntilSignal } from "@tessera/core";
import { readNodeAdvert } from "@tessera/rpc";
import { withRegistration, type NodeRegistryOptions } from "@tessera/nats";
import { createMemoryNode } from "./memory-node.js";
import type { MemoryNodeOptions } from "./options.js";

/**
 * Runs a memory-node as this process's main component: serves until
 * SIGINT/SIGTERM, then drains and closes.
 * With `registry.nats` it registers in the NATS node registry once it
 * serves (price and profile from its own Info), heartbeats, and
 * deregisters on SIGINT/SIGTERM before the server stops.
 * @throws ConfigError naming the option when `options` are invalid;
 *   NatsError naming the servers when registering fails.
 * Serves metrics first when `metrics.port` or TESSERA_METRICS_PORT says so
 * ({@link serveMetrics}: Prometheus text at http://<host>:<port>/metrics).
 * Then starts OpenTelemetry tracing ({@link startTelemetry}: OTEL_* variables,
 * service name "tessera-memory-node") and flushes it once the service has stopped.
 */
export async function runMemoryNode(
  options: MemoryNodeOptions,
  registry: NodeRegistryOptions = {},
  metrics: Pick<ServeMetricsOptions, "port"> = {},
): Promise<void> {
  const who = { serviceName: "tessera-memory-node", role: "memory", nodeId: defaultNodeId(options.port) };
  return withTelemetry(who, { host: options.host, metricsPort: metrics.port }, () =>
    runUntilSignal(
      withRegistration(createMemoryNode(options), "memory", registry, (address) => readNodeAdvert("memory", address)),
    ),
  );
}
