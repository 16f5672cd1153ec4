import { defaultNodeId, withTelemetry, type ServeMetricsOptions } from "@tessera/telemetry";
import { runUntilSignal, withCompanion } from "@tessera/core";
import { createCoordinator, type CoordinatorService } from "./coordinator.js";
import { createHttpApi, type HttpApi } from "./http/server.js";
import { createJobWorker, type JobWorker } from "./api/job-worker.js";
import type { CoordinatorOptions } from "./options.js";

/** The HTTP API of {@link runCoordinator}. */
export interface RunHttpOptions {
  /** Port of the OpenAI-compatible HTTP API (http/server.ts); none unless set (0: a free port). */
  port?: number | undefined;
}

/**
 * Runs a coordinator as this process's main component until SIGINT/SIGTERM.
 * With `nats` set it also runs the job worker (see {@link createJobWorker}):
 * started once the coordinator serves, stopped first on the way out (its
 * running job handed back to the queue). With `http.port` it serves the
 * OpenAI-compatible HTTP API ({@link createHttpApi}) once the coordinator
 * serves, and stops it first (no new requests; those in flight get the
 * grace period, then are cancelled).
 * Serves metrics first when `metrics.port` or TESSERA_METRICS_PORT says so
 * ({@link serveMetrics}: Prometheus text at http://<host>:<port>/metrics,
 * on the coordinator's host), then starts OpenTelemetry tracing
 * ({@link startTelemetry}: OTEL_* variables, service name
 * "tessera-coordinator") and flushes both once the coordinator has stopped.
 */
export async function runCoordinator(
  options: CoordinatorOptions,
  metrics: Pick<ServeMetricsOptions, "port"> = {},
  http: RunHttpOptions = {},
): Promise<void> {
  const who = { serviceName: "tessera-coordinator", role: "coordinator", nodeId: defaultNodeId(options.port) };
  return withTelemetry(who, { host: options.host, metricsPort: metrics.port }, () => serveCoordinator(options, http));
}

function serveCoordinator(options: CoordinatorOptions, http: RunHttpOptions): Promise<void> {
  const coordinator = createCoordinator(options);
  const nats = coordinator.options.nats;
  if (nats === undefined && http.port === undefined) return runUntilSignal(coordinator);
  let worker: JobWorker | undefined;
  let api: HttpApi | undefined;
  return runUntilSignal(
    withCompanion(coordinator, {
      async afterStart() {
        if (nats !== undefined) worker = await startWorker(coordinator, nats);
        if (http.port !== undefined) {
          api = createHttpApi(coordinator, { port: http.port });
          await api.start();
        }
      },
      beforeStop: async () => {
        await api?.close();
        await worker?.close();
      },
    }),
  );
}

/** Starts the coordinator's job worker. @throws NatsError when NATS does not answer (the worker closed). */
async function startWorker(coordinator: CoordinatorService, nats: string): Promise<JobWorker> {
  const worker = createJobWorker({
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
  return worker;
}
