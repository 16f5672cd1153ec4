/**
 * `GET /v1/models` (the coordinator's served models as OpenAI model
 * objects), `GET /v1/models/{model}`, and `GET /health`: 200 while the
 * coordinator runs with at least one gpu-node and one KV node (memory- or
 * storage-node) up, else 503 saying what is missing. `GET /metrics`: the
 * process's Prometheus text, the very scrape of its metrics port (the same
 * exporter), or 404 `metrics_off` when it serves none.
 */
import type { FastifyInstance } from "fastify";
import { metricsRequestHandler } from "@tessera/telemetry";
import type { CoordinatorService } from "../coordinator.js";
import type { ServedModel } from "../served-models.js";
import { OpenAiError, modelNotFound } from "./errors.js";

/** An OpenAI model object; `created` is when the HTTP API started (Unix seconds). */
function modelObject(m: ServedModel, created: number) {
  return { id: m.name, object: "model", created, owned_by: "tessera" };
}

/**
 * The served model named `name` (served names only: never a path).
 * @throws OpenAiError 404 model_not_found.
 */
export function servedModel(coordinator: CoordinatorService, name: string): ServedModel {
  const m = coordinator.options.models.find((x) => x.name === name);
  if (!m) throw modelNotFound(name);
  return m;
}

/** Why the coordinator cannot serve now ("" when it can). */
export function notReady(coordinator: CoordinatorService): string {
  if (coordinator.state !== "running") return `the coordinator is ${coordinator.state}`;
  const m = coordinator.membership;
  const why: string[] = [];
  if (m.up("gpu").length === 0) why.push("no gpu-node is up");
  if (m.up("memory").length + m.up("storage").length === 0) why.push("no memory- or storage-node is up");
  return why.join("; ");
}

/** Registers the model, health and metrics routes. */
export function modelRoutes(app: FastifyInstance, coordinator: CoordinatorService): void {
  const created = Math.floor(Date.now() / 1000);
  app.get("/v1/models", async () => ({
    object: "list",
    data: coordinator.options.models.map((m) => modelObject(m, created)),
  }));
  app.get<{ Params: { model: string } }>("/v1/models/:model", async (req) =>
    modelObject(servedModel(coordinator, req.params.model), created),
  );
  app.get("/health", { config: { public: true } }, async () => {
    const why = notReady(coordinator);
    if (why) throw new OpenAiError(503, "service_unavailable", why);
    const m = coordinator.membership;
    return {
      status: "ok",
      gpu_nodes: m.up("gpu").length,
      kv_nodes: m.up("memory").length + m.up("storage").length,
    };
  });
  // Public as /health is: Prometheus scrapes carry no bearer token, and the
  // series hold counts and latencies, no prompt or tenant data.
  app.get("/metrics", { config: { public: true } }, async (req, reply) => {
    const handler = metricsRequestHandler();
    if (!handler) {
      throw new OpenAiError(
        404,
        "invalid_request_error",
        "metrics are off: start the coordinator with --metrics-port or TESSERA_METRICS_PORT",
        null,
        "metrics_off",
      );
    }
    reply.hijack();
    handler(req.raw, reply.raw);
  });
}
