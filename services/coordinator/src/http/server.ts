/**
 * The coordinator's OpenAI-compatible HTTP API (issue 14), on Fastify:
 * `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
 * `/v1/files` (files.ts) and `GET /health` (routes in models.ts, completions.ts, chat.ts). Bodies
 * are validated from JSON schemas (schemas.ts; unknown fields refused);
 * every error is OpenAI's error body (errors.ts). Callers are the gRPC
 * side's tenants: with `--tokens` each request needs `Authorization:
 * Bearer <token>` (`/health` excepted, for probes). Over TLS from the
 * process's certificate when it has one (the coordinator's --tls-cert).
 */
import Fastify, { type FastifyInstance } from "fastify";
import { transportSecurity, type TransportSecurity } from "@tessera/proto";
import type { CoordinatorService } from "../coordinator.js";
import type { Identity } from "../api/auth.js";
import { chatRoutes } from "./chat.js";
import { completionRoutes } from "./completions.js";
import { fileRoutes } from "./files.js";
import { OpenAiError, toOpenAiError } from "./errors.js";
import { modelRoutes } from "./models.js";
import type { RouteContext } from "./respond.js";

declare module "fastify" {
  interface FastifyRequest {
    /** The caller (bearer token's tenant, or an admin without --tokens). */
    who: Identity;
  }
  interface FastifyContextConfig {
    /** Served without a token (health probes). */
    public?: boolean;
  }
}

/** Options of {@link createHttpApi}. */
export interface HttpApiOptions {
  /** @default the coordinator's host */
  host?: string;
  /** 0: a free port. */
  port: number;
  /** Largest request body, in bytes. @default the coordinator's limits.maxRequestBytes */
  bodyLimitBytes?: number;
  /**
   * How long close() waits for requests in flight before it cancels them, in ms.
   * @default the coordinator's shutdownGraceMs
   */
  shutdownGraceMs?: number;
  /** TLS (its certificate and key) or plaintext. @default the process's ({@link transportSecurity}) */
  security?: TransportSecurity;
}

/** A running HTTP API. */
export interface HttpApi {
  /** Binds the port. @throws Error when it cannot (e.g. taken). */
  start(): Promise<void>;
  /** "http://host:port" (or https), once started. */
  readonly url: string;
  /**
   * Stops accepting, lets requests in flight finish for the grace period,
   * then cancels the rest (their streams end with an error event). Idempotent.
   */
  close(): Promise<void>;
}

/** Creates the HTTP API of `coordinator`; nothing listens until `start()`. */
export function createHttpApi(coordinator: CoordinatorService, o: HttpApiOptions): HttpApi {
  const { options } = coordinator;
  const log = options.log;
  const host = o.host ?? options.host;
  const security = o.security ?? transportSecurity();
  const tls = security.kind === "tls" && security.cert && security.key ? security : undefined;
  const app = Fastify({
    logger: false,
    bodyLimit: o.bodyLimitBytes ?? options.limits.maxRequestBytes,
    ...(tls ? { https: { cert: tls.cert!, key: tls.key! } } : {}),
    // Unknown fields are an error naming them (not removed), and types are not coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false } },
  }) as unknown as FastifyInstance;
  const ctx: RouteContext = { coordinator, inFlight: new Set(), log };
  routes(app, ctx);
  let url = "";
  let closing: Promise<void> | undefined;
  return {
    async start() {
      await app.listen({ host, port: o.port });
      const addr = app.server.address();
      const port = typeof addr === "object" && addr ? addr.port : o.port;
      url = `${tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;
      log(`http: OpenAI-compatible API on ${url}/v1`);
    },
    get url() {
      return url;
    },
    close() {
      closing ??= (async () => {
        const timer = setTimeout(() => {
          for (const a of ctx.inFlight) a.abort();
        }, o.shutdownGraceMs ?? options.shutdownGraceMs);
        try {
          await app.close();
        } finally {
          clearTimeout(timer);
        }
      })();
      return closing;
    },
  };
}

/** The hooks (auth, errors) and every route. */
function routes(app: FastifyInstance, ctx: RouteContext): void {
  const auth = ctx.coordinator.authenticator;
  app.decorateRequest("who", undefined as unknown as Identity);
  app.addHook("onRequest", async (req) => {
    if (req.routeOptions.config.public) return;
    req.who = auth.identifyHeader(req.headers.authorization);
  });
  app.setErrorHandler((err, _req, reply) => {
    const e = toOpenAiError(err, ctx.log);
    return reply.status(e.status).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new OpenAiError(
      404,
      "invalid_request_error",
      `Unknown request URL: ${req.method} ${req.url.split("?")[0]}`,
      null,
      "unknown_url",
    );
    return reply.status(404).send(e.body());
  });
  modelRoutes(app, ctx.coordinator);
  completionRoutes(app, ctx);
  chatRoutes(app, ctx);
  void app.register((sub) => fileRoutes(sub, ctx.coordinator));
}
