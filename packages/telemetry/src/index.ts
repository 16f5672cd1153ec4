/**
 * OpenTelemetry for a Tessera process. Only `main.ts` files call
 * {@link startTelemetry}; libraries (proto, core, nats, the services) use
 * `@opentelemetry/api` alone, which is a no-op until an SDK is registered.
 *
 * Configuration is the standard `OTEL_*` environment variables, read by the
 * OpenTelemetry Node SDK (`startNodeSdk` of `@opentelemetry/sdk-node`):
 * OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
 * OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, grpc, http/json),
 * OTEL_TRACES_EXPORTER (otlp, console, zipkin, none), OTEL_TRACES_SAMPLER(_ARG),
 * OTEL_PROPAGATORS, OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
 * (overrides the role's service name) and OTEL_SDK_DISABLED.
 *
 * Tracing is off, and costs nothing (no SDK is loaded, spans are the API's
 * non-recording ones), unless an exporter is asked for: OTEL_TRACES_EXPORTER
 * set to something other than "none", or an OTLP endpoint
 * (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set.
 * The SDK's own default (export to localhost:4318 whether or not a collector
 * listens) would make every node pay for tracing nobody reads.
 */
import { hostname } from "node:os";
import { resourceAttributesOf, serveMetrics } from "./metrics.js";

export * from "./metrics.js";
export { REDACTED, isSecretFlag, redactArgv, redactUserinfo } from "./redact.js";

/** Who this process is, for the resource of its spans. */
export interface TelemetryOptions {
  /** `service.name`: "tessera-coordinator", "tessera-gpu-node", ...; OTEL_SERVICE_NAME wins over it. */
  serviceName: string;
  /** `tessera.role`: "coordinator", "gpu", "memory" or "storage". */
  role: string;
  /** `tessera.node_id` (and `service.instance.id`): the node's id, e.g. its host:port or registry id. */
  nodeId: string;
  /** `tessera.pool`: the node pool it belongs to (a Helm StatefulSet, a price class); @default env TESSERA_POOL, omitted when neither is set. */
  pool?: string;
}

/** A started (or skipped) SDK. */
export interface Telemetry {
  /** True when spans are recorded and exported; false when tracing is off (see the module comment). */
  readonly enabled: boolean;
  /** The resource attributes given to the SDK (empty when off). */
  readonly resourceAttributes: Readonly<Record<string, string>>;
  /**
   * Exports the spans ended so far now (the batch processor otherwise waits
   * up to OTEL_BSP_SCHEDULE_DELAY); never rejects (failures go to stderr).
   * Nothing to do when off.
   */
  forceFlush(): Promise<void>;
  /**
   * Flushes spans not yet exported and stops the SDK; idempotent. Never
   * rejects: an exporter that cannot reach its collector is reported on
   * stderr (telemetry never stops a node from shutting down).
   */
  shutdown(): Promise<void>;
}

/**
 * Whether `env` asks for tracing: an exporter other than "none" in
 * OTEL_TRACES_EXPORTER, or an OTLP endpoint, and OTEL_SDK_DISABLED not "true".
 */
export function tracingRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? "").trim().toLowerCase() === "true") return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? "").trim().toLowerCase();
  if (exporters !== "") return exporters.split(",").some((e) => e.trim() !== "none" && e.trim() !== "");
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

/**
 * A node id for `tessera.node_id` when none is configured: TESSERA_NODE_ID,
 * else `<hostname>:<port>` (on Kubernetes the host name is the pod's name),
 * else, for a port chosen by the OS (0 or unset), `<hostname>/pid-<pid>`.
 */
export function defaultNodeId(port?: number | string, env: NodeJS.ProcessEnv = process.env): string {
  const configured = env.TESSERA_NODE_ID?.trim();
  if (configured) return configured;
  return port !== undefined && Number(port) !== 0 ? `${hostname()}:${port}` : `${hostname()}/pid-${process.pid}`;
}

const off: Telemetry = Object.freeze({
  enabled: false,
  resourceAttributes: Object.freeze({}),
  forceFlush: () => Promise.resolve(),
  shutdown: () => Promise.resolve(),
});

/**
 * Starts the OpenTelemetry Node SDK for this process (traces only; metrics
 * and logs follow their own OTEL_METRICS_EXPORTER / OTEL_LOGS_EXPORTER), with
 * resource attributes `service.name`, `service.instance.id`, `tessera.role`,
 * `tessera.node_id` and `tessera.pool`, the W3C trace-context propagator
 * (unless OTEL_PROPAGATORS says otherwise) and a batch span processor
 * (OTEL_BSP_*). Metrics (besides the Prometheus endpoint of {@link startMetrics},
 * which registers the global MeterProvider first) and logs are exported only when
 * OTEL_METRICS_EXPORTER / OTEL_LOGS_EXPORTER name an exporter. When
 * tracing is not requested ({@link tracingRequested}) nothing is loaded and
 * the returned handle's `shutdown()` does nothing. The resource's
 * `process.command_args` has secret flags' values and URL credentials
 * replaced ({@link redactArgv}). Call once per process,
 * before any span is started; call `shutdown()` last on the way out.
 * SDK diagnostics: warnings and errors, or OTEL_LOG_LEVEL's level.
 */
export async function startTelemetry(options: TelemetryOptions): Promise<Telemetry> {
  // The SDK reads process.env itself: the decision and the names come from the same place.
  const env = process.env;
  if (!tracingRequested(env)) return off;
  const resourceAttributes = resourceAttributesOf(options, env);
  // Loaded only when tracing is on: the SDK and its exporters are large.
  const { startNodeSdk } = await import("@opentelemetry/sdk-node");
  const { trace } = await import("@opentelemetry/api");
  const { resourceDetectorsOf } = await import("./resource-detectors.js");
  const sdk = startNodeSdk({
    resourceAttributes,
    // The SDK's own detectors, the process one with secret flags and URL credentials redacted.
    resourceDetectors: resourceDetectorsOf(env),
    // The SDK's diagnostics (a collector out of reach, ...): warnings and errors unless OTEL_LOG_LEVEL says more.
    logLevel: env.OTEL_LOG_LEVEL?.trim() || "warn",
    // Metrics and logs only when asked for by name (the SDK's default would export them too).
    ...(env.OTEL_METRICS_EXPORTER?.trim() ? {} : { metricReaders: [] }),
    ...(env.OTEL_LOGS_EXPORTER?.trim() ? {} : { logRecordProcessors: [] }),
  });
  let stopping: Promise<void> | undefined;
  return {
    enabled: true,
    resourceAttributes: Object.freeze(resourceAttributes),
    forceFlush: async () => {
      // startNodeSdk's handle has no flush: the registered provider (behind the API's proxy) has.
      const provider = trace.getTracerProvider() as { getDelegate?(): unknown };
      const sdkProvider = (provider.getDelegate?.() ?? provider) as { forceFlush?(): Promise<void> };
      await sdkProvider.forceFlush?.().catch((err: unknown) => {
        process.stderr.write(`${options.serviceName}: telemetry flush: ${(err as Error).message}\n`);
      });
    },
    shutdown: () =>
      (stopping ??= sdk.shutdown().catch((err: unknown) => {
        process.stderr.write(`${options.serviceName}: telemetry shutdown: ${(err as Error).message}\n`);
      })),
  };
}

/**
 * Runs a service's main work `run` with its telemetry around it: the
 * metrics endpoint first (a service's instruments are made on the
 * MeterProvider it registers; {@link serveMetrics}: `metricsPort`, else
 * TESSERA_METRICS_PORT, else none), then tracing ({@link startTelemetry}),
 * and after `run` ends however it ends, tracing flushed and the endpoint
 * closed.
 * @throws what `run` throws; Error naming TESSERA_METRICS_PORT or the
 *   endpoint when metrics cannot be served.
 */
export async function withTelemetry<T>(
  who: TelemetryOptions,
  serve: { host?: string; metricsPort?: number | undefined },
  run: () => Promise<T>,
): Promise<T> {
  const metrics = await serveMetrics({
    ...who,
    ...(serve.host !== undefined ? { host: serve.host } : {}),
    ...(serve.metricsPort !== undefined ? { port: serve.metricsPort } : {}),
  });
  const telemetry = await startTelemetry(who);
  try {
    return await run();
  } finally {
    await telemetry.shutdown();
    await metrics?.shutdown();
  }
}
