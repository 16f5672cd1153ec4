/**
 * OpenTelemetry metrics for a Tessera process, served as a Prometheus scrape
 * endpoint (`GET /metrics`, text format 0.0.4) by
 * `@opentelemetry/exporter-prometheus` on a port of the process's own
 * (`--metrics-port`, TESSERA_METRICS_PORT; off unless one is given).
 * Independent of tracing: {@link startMetrics} registers its own global
 * MeterProvider, whatever OTEL_TRACES_EXPORTER says.
 *
 * Libraries record through `@opentelemetry/api` and get their instruments
 * from {@link lazyInstruments}: the API has no proxy meter provider (a meter
 * taken before the SDK is registered stays a no-op forever), so instruments
 * are made on first use and made again if the global provider changes.
 * With metrics off, they are the API's no-op instruments.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { metrics, type Meter, type MeterProvider } from "@opentelemetry/api";
import type { TelemetryOptions } from "./index.js";

/** Where and as whom {@link startMetrics} serves. */
export interface MetricsOptions extends TelemetryOptions {
  /** TCP port of the scrape endpoint; 0 lets the OS choose a free one (see {@link Metrics.url}). */
  port: number;
  /** Address to bind, like the service's own gRPC host. @default "127.0.0.1" */
  host?: string;
}

/** A running scrape endpoint. */
export interface Metrics {
  /** `http://<host>:<port>/metrics`, with the port the OS gave for port 0. */
  readonly url: string;
  /** The bound port. */
  readonly port: number;
  /** Stops the endpoint and the MeterProvider (the global one is unset); idempotent, never rejects. */
  shutdown(): Promise<void>;
}

/**
 * The scrape port TESSERA_METRICS_PORT asks for, or undefined when unset or
 * empty (metrics off).
 * @throws Error naming TESSERA_METRICS_PORT when it is not an integer in [0, 65535].
 */
export function metricsPortFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env.TESSERA_METRICS_PORT?.trim();
  if (!raw) return undefined;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`TESSERA_METRICS_PORT: must be a port number 0-65535, got ${JSON.stringify(raw)}`);
  }
  return port;
}

/**
 * The resource attributes of a process (spans and metrics alike):
 * `service.name` (OTEL_SERVICE_NAME wins), `service.instance.id`,
 * `tessera.role`, `tessera.node_id`, `tessera.pool` (or env TESSERA_POOL;
 * omitted when neither is set).
 */
export function resourceAttributesOf(
  options: TelemetryOptions,
  env: NodeJS.ProcessEnv = process.env,
): Record<string, string> {
  const attributes: Record<string, string> = {
    "service.name": env.OTEL_SERVICE_NAME?.trim() || options.serviceName,
    "service.instance.id": options.nodeId,
    "tessera.role": options.role,
    "tessera.node_id": options.nodeId,
  };
  const pool = options.pool ?? env.TESSERA_POOL?.trim();
  if (pool) attributes["tessera.pool"] = pool;
  return attributes;
}

/** Writes the scrape of the running endpoint to `res` (status 200, text format 0.0.4). */
export type MetricsRequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

let served: MetricsRequestHandler | undefined;

/**
 * The request handler of the endpoint {@link startMetrics} runs in this
 * process (undefined when none runs), for another HTTP server to answer
 * `GET /metrics` with the very same text (e.g. the coordinator's HTTP API):
 * one exporter and one registry, so no series is duplicated or split.
 */
export function metricsRequestHandler(): MetricsRequestHandler | undefined {
  return served;
}

/**
 * Starts a MeterProvider whose reader is a Prometheus exporter, registers it
 * as the global one, and serves its `GET /metrics` on `host:port` (any other
 * path: 404). Every series carries the labels `tessera_role`,
 * `tessera_node_id` and (when set) `tessera_pool`; `target_info` carries the
 * whole resource. Call once per process, before the service is created (see
 * {@link lazyInstruments}); `shutdown()` on the way out.
 * @throws Error naming the host and port when the port cannot be bound;
 *   Error when another global MeterProvider is registered already.
 */
export async function startMetrics(options: MetricsOptions): Promise<Metrics> {
  const { PrometheusExporter } = await import("@opentelemetry/exporter-prometheus");
  const { MeterProvider: SdkMeterProvider } = await import("@opentelemetry/sdk-metrics");
  const { resourceFromAttributes } = await import("@opentelemetry/resources");
  const host = options.host ?? "127.0.0.1";
  const exporter = new PrometheusExporter({
    preventServerStart: true,
    withResourceConstantLabels: /^tessera\.(role|node_id|pool)$/,
  });
  const provider = new SdkMeterProvider({
    resource: resourceFromAttributes(resourceAttributesOf(options)),
    readers: [exporter],
  });
  if (!metrics.setGlobalMeterProvider(provider)) {
    await provider.shutdown();
    throw new Error(`${options.serviceName}: metrics: a global MeterProvider is registered already`);
  }
  const handler: MetricsRequestHandler = (req, res) => exporter.getMetricsRequestHandler(req, res);
  const server: Server = createServer((req, res) => {
    if (req.method === "GET" && (req.url ?? "").split("?")[0] === "/metrics") {
      handler(req, res);
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: the metrics are at GET /metrics\n");
    }
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    metrics.disable();
    await provider.shutdown();
    throw new Error(`${options.serviceName}: metrics endpoint ${host}:${options.port}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const { port } = server.address() as AddressInfo;
  const urlHost = host.includes(":") ? `[${host}]` : host;
  let stopping: Promise<void> | undefined;
  served = handler;
  return {
    url: `http://${urlHost}:${port}/metrics`,
    port,
    shutdown: () =>
      (stopping ??= (async () => {
        if (served === handler) served = undefined;
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        metrics.disable();
        await provider.shutdown().catch((err: unknown) => {
          process.stderr.write(`${options.serviceName}: metrics shutdown: ${(err as Error).message}\n`);
        });
      })()),
  };
}

/**
 * A getter for the instruments `create` makes on the meter `scope` of the
 * global MeterProvider: made on first call, and again whenever the global
 * provider has changed since (startMetrics after a first use, or a test's
 * second cluster). Cheap enough per step: one global lookup and a compare.
 */
export function lazyInstruments<T>(scope: string, create: (meter: Meter) => T): () => T {
  let provider: MeterProvider | undefined;
  let made: T | undefined;
  return () => {
    const p = metrics.getMeterProvider();
    if (p !== provider || made === undefined) {
      provider = p;
      made = create(p.getMeter(scope));
    }
    return made;
  };
}

/** Histogram buckets in seconds for step and stage latencies: 100 µs to 30 s. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

/** What a KV node reports to {@link watchKvBytes}, at each scrape. */
export interface KvBytes {
  /** The node's host:port (the `tessera_address` label). */
  address: string;
  /** Bytes reserved by open sequences. */
  usedBytes: number;
  /** The node's KV capacity in bytes. */
  capacityBytes: number;
}

const kvNodes = new Set<() => KvBytes>();
const kvInstruments = lazyInstruments("@tessera/kv", (meter) => {
  const used = meter.createObservableGauge("tessera.kv.used_bytes", {
    description: "KV cache bytes reserved by open sequences on this memory- or storage-node",
    unit: "By",
  });
  const capacity = meter.createObservableGauge("tessera.kv.capacity_bytes", {
    description: "KV cache capacity of this memory- or storage-node",
    unit: "By",
  });
  meter.addBatchObservableCallback(
    (r) => {
      for (const read of kvNodes) {
        const b = read();
        r.observe(used, b.usedBytes, { "tessera.address": b.address });
        r.observe(capacity, b.capacityBytes, { "tessera.address": b.address });
      }
    },
    [used, capacity],
  );
  return { used, capacity };
});

/**
 * Shows a memory- or storage-node's KV use in the gauges
 * `tessera_kv_used_bytes` and `tessera_kv_capacity_bytes` (label
 * `tessera_address`), calling `read` at each scrape, until the returned
 * function is called (on close).
 */
export function watchKvBytes(read: () => KvBytes): () => void {
  kvInstruments();
  kvNodes.add(read);
  return () => {
    kvNodes.delete(read);
  };
}

/** Options of {@link serveMetrics}: who the process is, and where to serve. */
export interface ServeMetricsOptions extends TelemetryOptions {
  /** Scrape port (`--metrics-port`); undefined: TESSERA_METRICS_PORT, and when that is unset too, no endpoint. */
  port?: number;
  /** The service's bind host. @default "127.0.0.1" */
  host?: string;
}

/**
 * A service's `main.ts` entry to metrics: starts the Prometheus endpoint
 * ({@link startMetrics}) when a port is given or TESSERA_METRICS_PORT is
 * set, and writes `<serviceName>: metrics at <url>` to stderr (the port the
 * OS chose, for 0); undefined when metrics are off.
 * @throws Error naming TESSERA_METRICS_PORT or the endpoint (see startMetrics).
 */
export async function serveMetrics(
  options: ServeMetricsOptions,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Metrics | undefined> {
  const port = options.port ?? metricsPortFromEnv(env);
  if (port === undefined) return undefined;
  const m = await startMetrics({ ...options, port });
  process.stderr.write(`${options.serviceName}: metrics at ${m.url}\n`);
  return m;
}
