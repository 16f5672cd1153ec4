/**
 * OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`,
 * with its HTTP status, and the mapping of the coordinator's RpcError codes
 * and Fastify's schema-validation errors onto it.
 */
import { Code, RpcError } from "@tessera/proto";

/** OpenAI's error types (the `type` field). */
export type OpenAiErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "rate_limit_error"
  | "server_error"
  | "service_unavailable";

/** An error answered as OpenAI's error body with `status`. */
export class OpenAiError extends Error {
  override name = "OpenAiError";
  constructor(
    readonly status: number,
    readonly type: OpenAiErrorType,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  /** The response body. */
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A 400 invalid_request_error naming `param`. */
export function invalidRequest(param: string | null, message: string, code: string | null = null): OpenAiError {
  return new OpenAiError(400, "invalid_request_error", message, param, code);
}

/** The 404 of a model that is not served (OpenAI's `model_not_found`). */
export function modelNotFound(model: string): OpenAiError {
  return new OpenAiError(
    404,
    "invalid_request_error",
    `The model \`${model.slice(0, 128)}\` does not exist (GET /v1/models lists the served models)`,
    "model",
    "model_not_found",
  );
}

/** Status and type of each RpcError code the coordinator's Generate throws. */
const BY_CODE: ReadonlyMap<Code, [number, OpenAiErrorType]> = new Map([
  [Code.INVALID_ARGUMENT, [400, "invalid_request_error"]],
  [Code.OUT_OF_RANGE, [400, "invalid_request_error"]],
  [Code.NOT_FOUND, [404, "not_found_error"]],
  [Code.UNAUTHENTICATED, [401, "authentication_error"]],
  [Code.PERMISSION_DENIED, [403, "permission_error"]],
  [Code.RESOURCE_EXHAUSTED, [429, "rate_limit_error"]],
  [Code.UNAVAILABLE, [503, "service_unavailable"]],
  [Code.DEADLINE_EXCEEDED, [504, "server_error"]],
]);

/**
 * Any error as an OpenAiError: itself, an RpcError by its code (message
 * kept: the coordinator's messages are written for callers), Fastify's
 * validation and body errors as 400 naming the field, else a 500 whose
 * message says nothing of the internals (the error goes to `log`).
 */
export function toOpenAiError(err: unknown, log: (line: string) => void): OpenAiError {
  if (err instanceof OpenAiError) return err;
  if (err instanceof RpcError) {
    const [status, type] = BY_CODE.get(err.code) ?? [500, "server_error"];
    return new OpenAiError(status, type, err.message);
  }
  const e = err as { validation?: ValidationIssue[]; statusCode?: number; message?: string; code?: string };
  if (e.validation) return validationError(e.validation);
  if (typeof e.statusCode === "number" && e.statusCode >= 400 && e.statusCode < 500) {
    // Fastify's own: a body too large, not JSON, a wrong content type.
    return new OpenAiError(e.statusCode, "invalid_request_error", e.message ?? "bad request", null, e.code ?? null);
  }
  log(`http: internal error: ${(err as Error)?.stack ?? String(err)}`);
  return new OpenAiError(500, "server_error", "internal error (see the coordinator's log)");
}

/** One of ajv's errors, as Fastify hands them over. */
interface ValidationIssue {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
}

/** The first schema violation as a 400 naming its parameter ("messages[0].role", "stop"). */
function validationError(issues: readonly ValidationIssue[]): OpenAiError {
  const v = issues[0]!;
  const path = v.instancePath
    .split("/")
    .filter(Boolean)
    .map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`))
    .join("");
  if (v.keyword === "additionalProperty" || v.keyword === "additionalProperties") {
    const name = String(v.params["additionalProperty"]);
    const param = path ? `${path}.${name}` : name;
    return invalidRequest(param, `Unrecognized request argument supplied: ${param}`);
  }
  if (v.keyword === "required") {
    const name = String(v.params["missingProperty"]);
    const param = path ? `${path}.${name}` : name;
    return invalidRequest(param, `Missing required parameter: '${param}'`);
  }
  return invalidRequest(path || null, `Invalid value for '${path || "body"}': ${v.message ?? v.keyword}`);
}
