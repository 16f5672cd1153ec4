/**
 * Batch job input and output files (issue 5): Tessera's prompts JSONL (see
 * {@link parsePromptsJsonl}) or the OpenAI Batch API format, detected per
 * file, with results written back in the format the input came in, so an
 * existing batch pipeline reads Tessera's output unchanged.
 *
 * OpenAI Batch API input line (https://platform.openai.com/docs/guides/batch):
 * `{"custom_id": "r1", "method": "POST", "url": "/v1/completions",
 *   "body": {"model": "m", "prompt": "Once", "max_tokens": 64,
 *            "temperature": 0.8, "top_p": 0.9, "seed": 42}}`.
 * Its output line is `{"id", "custom_id", "response": {"status_code": 200,
 * "request_id", "body": <a /v1/completions response>}, "error": null}`.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import type { Result } from "@tessera/proto";
import { PROMPT_FILE_DEFAULTS, parsePromptLines, promptFileLines, promptSpecOf } from "./prompt-lines.js";
import { parsePromptsJsonl, type PromptLimits, type PromptSpec } from "./prompts.js";

/** The two batch file formats: Tessera's prompts JSONL, or the OpenAI Batch API's. */
export type BatchFormat = "tessera" | "openai";

/** A validated batch input file. */
export interface BatchInput {
  format: BatchFormat;
  /** Prompts in file order; for OpenAI files `id` is the line's `custom_id`. */
  prompts: PromptSpec[];
}

const openAiLineSchema = z.strictObject({
  custom_id: z.string().min(1, "must be a non-empty string"),
  method: z.literal("POST"),
  url: z.literal("/v1/completions"),
  body: z.strictObject({
    // Accepted (pipelines always send one) but not used: the job's model runs.
    model: z.string().optional(),
    prompt: z.string(),
    max_tokens: z.int().positive().optional(),
    temperature: z.number().min(0).optional(),
    top_p: z.number().gt(0).max(1).optional(),
    seed: z.int().nonnegative().optional(),
  }),
});

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const field = issue.path.map(String).join(".");
      if (issue.code === "unrecognized_keys") {
        const keys = issue.keys.map((k) => `"${field ? `${field}.` : ""}${k}"`).join(", ");
        return `unknown field(s) ${keys}`;
      }
      if (!field) return "expected a JSON object";
      if (issue.code === "invalid_type" && /received undefined/.test(issue.message)) {
        return `missing required field "${field}"`;
      }
      return `field "${field}": ${issue.message}`;
    })
    .join("; ");
}

/**
 * Which format a batch file is in, from its first non-blank line: an object
 * with `custom_id` is the OpenAI Batch API format, anything else Tessera's
 * (whose parser then reports what is wrong with it). Only that line is
 * read: a first line over `maxLineBytes` or not UTF-8 is Tessera's too.
 * @param data the file's bytes or its text.
 */
export function detectBatchFormat(
  data: string | Uint8Array,
  maxLineBytes: number = PROMPT_FILE_DEFAULTS.maxLineBytes,
): BatchFormat {
  for (const first of promptFileLines(data, maxLineBytes)) {
    if ("fault" in first) return "tessera";
    try {
      const v: unknown = JSON.parse(first.source);
      return typeof v === "object" && v !== null && "custom_id" in v ? "openai" : "tessera";
    } catch {
      return "tessera";
    }
  }
  return "tessera";
}

/**
 * Parses an OpenAI Batch API input file (`/v1/completions` requests only).
 * Blank lines are skipped; a UTF-8 BOM and CRLF line ends are accepted.
 * @param path the file's name, for the error only.
 * @param data the file's bytes (a line that is not UTF-8 is reported), or its text.
 * @throws InputFileError listing every bad line with its 1-based number and
 *   the field (`body.max_tokens`, `url`, ...), a duplicate `custom_id`, a
 *   limit exceeded, or line 0 when the file holds no request.
 */
export function parseOpenAiBatchJsonl(
  path: string,
  data: string | Uint8Array,
  limits: PromptLimits = {},
): PromptSpec[] {
  return parsePromptLines(path, data, limits, {
    schema: openAiLineSchema,
    describeIssues,
    toSpec: ({ custom_id: id, body }, line) => promptSpecOf(id, line, body),
    idField: "custom_id",
    maxTokensField: "body.max_tokens",
    noun: "requests",
  });
}

/**
 * Parses a batch input file in either format.
 * @param data the file's bytes (a line that is not UTF-8 is reported), or its text.
 * @param format "auto" (default) detects it with {@link detectBatchFormat}.
 * @throws InputFileError naming the file, every bad line and its field.
 */
export function parseBatchInput(
  path: string,
  data: string | Uint8Array,
  format: BatchFormat | "auto" = "auto",
  limits: PromptLimits = {},
): BatchInput {
  const f = format === "auto" ? detectBatchFormat(data, limits.maxLineBytes) : format;
  return {
    format: f,
    prompts: f === "openai" ? parseOpenAiBatchJsonl(path, data, limits) : parsePromptsJsonl(path, data, limits),
  };
}

/** One line of a Tessera results file (snake_case, as `tessera run` writes it). */
export interface TesseraResultLine {
  id: string;
  prompt: string;
  completion: string;
  /** Prompt tokens, BOS included. */
  prompt_tokens: number;
  completion_tokens: number;
  completion_token_ids: number[];
  /** "stop", "length" or "error". */
  finish_reason: string;
  error?: string;
  kv_node: string;
  /** Seconds. */
  timings: { prefill_s: number; decode_s: number; total_s: number };
}

/** One line of an OpenAI Batch API output file for a `/v1/completions` request. */
export interface OpenAiBatchResultLine {
  /** "batch_req_" + 24 hex digits, derived from the job id and custom_id (stable across retries). */
  id: string;
  custom_id: string;
  response: {
    status_code: number;
    request_id: string;
    body: {
      id: string;
      object: "text_completion";
      /** Unix time in seconds. */
      created: number;
      model: string;
      choices: { text: string; index: number; logprobs: null; finish_reason: string }[];
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    };
  } | null;
  error: { code: string; message: string } | null;
}

/** What an output line needs beyond the Result. */
export interface BatchResultContext {
  jobId: string;
  /** The model name reported in OpenAI output (the job's model path, or "default"). */
  model: string;
  /** Unix time in seconds the result was produced. */
  created: number;
}

const round = (s: number) => Math.round(s * 1e6) / 1e6;

/** The Tessera results line of one Result (the line `tessera run` writes). */
export function tesseraResultLine(r: Result): TesseraResultLine {
  return {
    id: r.id,
    prompt: r.prompt,
    completion: r.completion,
    prompt_tokens: r.promptTokenIds.length,
    completion_tokens: r.completionTokenIds.length,
    completion_token_ids: [...r.completionTokenIds],
    finish_reason: r.finishReason,
    ...(r.error ? { error: r.error } : {}),
    kv_node: r.kvNode,
    timings: {
      prefill_s: round(r.timings?.prefillSeconds ?? 0),
      decode_s: round(r.timings?.decodeSeconds ?? 0),
      total_s: round(r.timings?.totalSeconds ?? 0),
    },
  };
}

const hex24 = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 24);

/**
 * The OpenAI Batch API output line of one Result. A prompt that failed
 * (finish_reason "error") gets `response: null` and
 * `error: {code: "generation_failed", message}`.
 */
export function openAiResultLine(r: Result, ctx: BatchResultContext): OpenAiBatchResultLine {
  const key = `${ctx.jobId}\n${r.id}`;
  if (r.finishReason === "error") {
    return {
      id: `batch_req_${hex24(key)}`,
      custom_id: r.id,
      response: null,
      error: { code: "generation_failed", message: r.error },
    };
  }
  const prompt = r.promptTokenIds.length;
  const completion = r.completionTokenIds.length;
  return {
    id: `batch_req_${hex24(key)}`,
    custom_id: r.id,
    response: {
      status_code: 200,
      request_id: `req_${hex24(`req\n${key}`)}`,
      body: {
        id: `cmpl-${hex24(`cmpl\n${key}`)}`,
        object: "text_completion",
        created: ctx.created,
        model: ctx.model,
        choices: [{ text: r.completion, index: 0, logprobs: null, finish_reason: r.finishReason }],
        usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
      },
    },
    error: null,
  };
}

/** The output line of one Result in `format`, as one line of JSON (no newline). */
export function formatBatchResult(format: BatchFormat, r: Result, ctx: BatchResultContext): string {
  return JSON.stringify(format === "openai" ? openAiResultLine(r, ctx) : tesseraResultLine(r));
}
