import { defaultNodeId, withTelemetry, type ServeMetricsOptions } from "@tessera/telemetry";
import { runUntilSignal, withCompanion } from "@tessera/core";
import { createCoordinator } from "./coordinator.js";
import { createJobWorker, type JobWorker } from "./api/job-worker.js";
import type { CoordinatorOptions } from "./options.js";

/**
 * Runs a coordinator as this process's main component until SIGINT/SIGTERM.
 * With `nats` set it also runs the job worker (see {@link createJobWorker}):
 * started once the coordinator serves, stopped first on the way out (its
 * running job handed back to the queue).
 * Serves metrics first when `metrics.port` or TESSERA_METRICS_PORT says so
 * ({@link serveMetrics}: Prometheus text at http://<host>:<port>/metrics,
 * on the coordinator's host), then starts OpenTelemetry tracing
 * ({@link startTelemetry}: OTEL_* variables, service name
 * "tessera-coordinator") and flushes both once the coordinator has stopped.
 */
export async function runCoordinator(
  options: CoordinatorOptions,
  metrics: Pick<ServeMetricsOptions, "port"> = {},
): Promise<void> {
  const who = { serviceName: "tessera-coordinator", role: "coordinator", nodeId: defaultNodeId(options.port) };
  return withTelemetry(who, { host: options.host, metricsPort: metrics.port }, () => serveCoordinator(options));
}

function serveCoordinator(options: CoordinatorOptions): Promise<void> {
  const coordinator = createCoordinator(options);
  const nats = coordinator.options.nats;
  if (nats === undefined) return runUntilSignal(coordinator);
  let worker: JobWorker | undefined;
  return runUntilSignal(
    withCompanion(coordinator, {
      async afterStart() {
        worker = createJobWorker({
          nats,
          natsPrefix: coordinator.options.natsPrefix,
          coordinator,
          concurrency: coordinator.options.jobConcurrency,
          retentionMs: coordinator.options.jobRetentionMs,
          sweepMs: coordinator.options.jobSweepMs,
          defaultModel: coordinator.options.models[0]?.name ?? "default",
          log: coordinator.options.log,
        });
        try {
          await worker.start();
        } catch (err) {
          await worker.close();
          throw err;
        }
      },
      beforeStop: async () => {
        await worker?.close();
      },
    }),
  );
}
