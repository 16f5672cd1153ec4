/**
 * Limits on what one job (a Generate request, or a submitted batch) may ask
 * for, checked once when it is submitted, before anything is planned or
 * stored: a job over a limit fails as a whole with INVALID_ARGUMENT naming
 * the field, its value and the limit, instead of running out of memory or
 * context halfway through (issue 5, "Limits and bad input").
 */
import { PROMPT_FILE_DEFAULTS, byteSizeOption, positiveInt, type BatchInput } from "@tessera/core";
import { Code, GenerateRequestSchema, RpcError, create, toBinary, type GenerateRequest } from "@tessera/proto";

/** Limits of one job as a user gives them (sizes as bytes or "64MiB"). */
export interface GenerateLimitsOptions {
  /** Most prompts in one job. @default 10000 */
  maxPrompts?: number;
  /** Most bytes (UTF-8) of one prompt's text. @default 64 KiB */
  maxPromptBytes?: number | string;
  /**
   * Largest max_tokens a job may ask for, in the request's sampling and in
   * each prompt's override (0 or unset means the coordinator's default,
   * 256, which is not checked). @default 4096
   */
  maxTokens?: number;
  /** Most bytes of the whole request as protobuf encodes it (prompts, ids, sampling). @default 64 MiB */
  maxRequestBytes?: number | string;
}

/** {@link GenerateLimitsOptions} with defaults applied, sizes in bytes; frozen. */
export interface GenerateLimits {
  readonly maxPrompts: number;
  readonly maxPromptBytes: number;
  readonly maxTokens: number;
  readonly maxRequestBytes: number;
}

/** The limits in force when none are configured. */
export const defaultGenerateLimits: GenerateLimits = Object.freeze({
  maxPrompts: 10_000,
  maxPromptBytes: 64 * 1024,
  maxTokens: 4096,
  maxRequestBytes: 64 * 1024 * 1024,
});

/**
 * Applies defaults and validates (each limit a positive integer; sizes
 * parsed to bytes).
 * @throws ConfigError naming the bad option.
 */
export function compileGenerateLimits(options: GenerateLimitsOptions = {}): GenerateLimits {
  const d = defaultGenerateLimits;
  return Object.freeze({
    maxPrompts: positiveInt("maxPrompts", options.maxPrompts, d.maxPrompts),
    maxPromptBytes: byteSizeOption("maxPromptBytes", options.maxPromptBytes, d.maxPromptBytes, 1),
    maxTokens: positiveInt("maxTokens", options.maxTokens, d.maxTokens),
    maxRequestBytes: byteSizeOption("maxRequestBytes", options.maxRequestBytes, d.maxRequestBytes, 1),
  });
}

/**
 * Most bytes of one line of a submitted batch file under `limits`: 16 times
 * `maxPromptBytes` (room for the prompt JSON-escaped and its other fields),
 * and never under PROMPT_FILE_DEFAULTS.maxLineBytes (1 MiB). A longer line
 * is refused naming its line before it is decoded.
 */
export function maxLineBytesOf(limits: GenerateLimits): number {
  return Math.max(PROMPT_FILE_DEFAULTS.maxLineBytes, 16 * limits.maxPromptBytes);
}

/**
 * Most bytes protobuf spends on one PromptInput beyond its id's and
 * prompt's UTF-8: the prompts field's tag and length (6), the two strings'
 * tags and lengths (12), max_tokens (6), temperature and top_p (10), seed
 * (11) and kv (11, a negative enum value), rounded up.
 */
const PROMPT_FRAMING_BYTES = 64;
/**
 * Most bytes of a GenerateRequest beyond its prompts and the UTF-8 of its
 * strings: the four strings' tags and lengths (24), sampling (6 + 27) and
 * kv (11), rounded up.
 */
const REQUEST_FRAMING_BYTES = 128;

/**
 * An upper bound of `request`'s protobuf size, from its strings' UTF-8
 * bytes (`textBytes`: every prompt's text and id, already summed by the
 * caller) and the most framing each field can take; undefined when a
 * message holds unknown fields (whose size it does not count). Spares
 * encoding a 64 MiB request on the event loop to learn that it is under
 * the limit.
 */
export function encodedSizeBound(request: GenerateRequest, textBytes: number): number | undefined {
  if (request.$unknown?.length || request.sampling?.$unknown?.length) return undefined;
  if (request.prompts.some((p) => p.$unknown?.length)) return undefined;
  const strings = [request.jobId, request.modelPath, request.tokenizerPath, request.priority];
  return (
    textBytes +
    request.prompts.length * PROMPT_FRAMING_BYTES +
    REQUEST_FRAMING_BYTES +
    strings.reduce((n, x) => n + Buffer.byteLength(x, "utf8"), 0)
  );
}

/**
 * Checks a job against `limits`, cheapest first: the number of prompts,
 * the request's sampling.max_tokens, then per prompt its text's UTF-8
 * bytes and max_tokens, and last the bytes of the whole request. That size
 * is `encodedBytes` when the caller has it (the received message or the
 * stored input's length), else the request re-encoded, unless
 * {@link encodedSizeBound} is already under the limit; either way only
 * once the prompts' text alone is under the limit, so a huge request is
 * refused without encoding it.
 * @throws RpcError INVALID_ARGUMENT naming the field (e.g.
 *   `prompts[3] (id "a").max_tokens`), its value and the limit.
 */
export function checkGenerateLimits(
  request: GenerateRequest,
  limits: GenerateLimits = defaultGenerateLimits,
  encodedBytes?: number,
): void {
  const over = (field: string, value: string, limit: string) =>
    new RpcError(Code.INVALID_ARGUMENT, `${field}: ${value} is over the limit of ${limit}`);
  const n = request.prompts.length;
  if (n > limits.maxPrompts) throw over("prompts", `${n} prompts`, `${limits.maxPrompts} prompts per job`);
  const sampling = request.sampling?.maxTokens ?? 0;
  if (sampling > limits.maxTokens)
    throw over("sampling.max_tokens", String(sampling), `${limits.maxTokens} tokens per prompt`);
  let textBytes = 0;
  for (const [i, p] of request.prompts.entries()) {
    const field = `prompts[${i}] (id ${JSON.stringify(p.id.length > 64 ? p.id.slice(0, 64) + "…" : p.id)})`;
    const bytes = Buffer.byteLength(p.prompt, "utf8");
    if (bytes > limits.maxPromptBytes)
      throw over(`${field}.prompt`, `${bytes} bytes`, `${limits.maxPromptBytes} bytes per prompt`);
    if (p.maxTokens !== undefined && p.maxTokens > limits.maxTokens)
      throw over(`${field}.max_tokens`, String(p.maxTokens), `${limits.maxTokens} tokens per prompt`);
    textBytes += bytes + Buffer.byteLength(p.id, "utf8");
    if (textBytes > limits.maxRequestBytes) break; // the request is over: no need to encode it
  }
  if (encodedBytes === undefined && textBytes <= limits.maxRequestBytes) {
    const bound = encodedSizeBound(request, textBytes);
    if (bound !== undefined && bound <= limits.maxRequestBytes) return;
  }
  const total =
    textBytes > limits.maxRequestBytes
      ? textBytes
      : (encodedBytes ?? toBinary(GenerateRequestSchema, request).byteLength);
  if (total > limits.maxRequestBytes) {
    const what =
      textBytes > limits.maxRequestBytes ? `at least ${total} bytes (its prompts and ids)` : `${total} bytes`;
    throw over("request", what, `${limits.maxRequestBytes} bytes per job`);
  }
}

/**
 * {@link checkGenerateLimits} for a parsed batch file (a submitted job):
 * its prompts and per-prompt max_tokens, the job's max_tokens
 * (`maxTokens`, unset = the default), and the file's size in bytes.
 * @throws RpcError INVALID_ARGUMENT naming the field, its value and the limit.
 */
export function checkBatchLimits(
  input: BatchInput,
  maxTokens: number | undefined,
  limits: GenerateLimits,
  bytes: number,
): void {
  const request = create(GenerateRequestSchema, {
    prompts: input.prompts.map((p) => ({
      id: p.id,
      prompt: p.prompt,
      ...(p.maxTokens !== undefined ? { maxTokens: p.maxTokens } : {}),
    })),
    sampling: { maxTokens: maxTokens ?? 0 },
  });
  checkGenerateLimits(request, limits, bytes);
}
