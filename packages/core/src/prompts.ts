/**
 * Tessera's prompts input: JSON Lines, one object per non-blank line:
 * `{"id": "s01", "prompt": "Once upon a time", "max_tokens": 64,
 *   "temperature": 0.8, "top_p": 0.9, "seed": 42, "kv": "memory"}`.
 * Only `id` and `prompt` are required; unset options take the job's
 * defaults. Unknown fields are rejected so that a misspelt option
 * (`"max_token"`) is not silently ignored.
 */
import { z } from "zod";
import { KvPlacement as WireKvPlacement, type GenerateRequestSchema, type MessageInitShape } from "@tessera/proto";
import { parsePromptLines, promptSpecOf } from "./prompt-lines.js";
import type { AttentionRole } from "./roles.js";

/** Where a sequence's KV cache goes: RAM of a memory-node, disk of a storage-node, or the planner's choice. */
export type KvPlacement = AttentionRole | "auto";

/** One validated prompt of a prompts file. */
export interface PromptSpec {
  /** Caller's id, unique in the file. */
  id: string;
  prompt: string;
  /** 1-based line of the file it came from. */
  line: number;
  /** Most tokens to generate (positive). */
  maxTokens?: number;
  /** Sampling temperature (>= 0; 0 = greedy). */
  temperature?: number;
  /** Nucleus mass in (0, 1]. */
  topP?: number;
  /** Sampler seed, a non-negative integer. */
  seed?: number;
  kv?: KvPlacement;
}

/** Optional upper bounds checked while parsing. */
export interface PromptLimits {
  /** Most prompts a file may hold; the lines beyond are reported. */
  maxPrompts?: number;
  /** Largest `max_tokens` accepted (e.g. the model's context length). */
  maxTokens?: number;
  /** Most bytes of one line, line end excluded. @default PROMPT_FILE_DEFAULTS.maxLineBytes (1 MiB) */
  maxLineBytes?: number;
}

const promptLineSchema = z.strictObject({
  id: z.string().min(1, "must be a non-empty string"),
  prompt: z.string(),
  max_tokens: z.int().positive().optional(),
  temperature: z.number().min(0).optional(),
  top_p: z.number().gt(0).max(1).optional(),
  seed: z.int().nonnegative().optional(),
  kv: z.enum(["memory", "storage", "auto"]).optional(),
});

/** One readable message per zod issue, naming the field. */
function describeIssues(error: z.ZodError, value: unknown): string {
  return error.issues
    .map((issue) => {
      if (issue.code === "unrecognized_keys") return `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
      const field = issue.path.map(String).join(".");
      if (!field)
        return value === null || Array.isArray(value) || typeof value !== "object"
          ? "expected a JSON object"
          : issue.message;
      if (issue.code === "invalid_type" && typeof value === "object" && value !== null && !(field in value)) {
        return `missing required field "${field}"`;
      }
      return `field "${field}": ${issue.message}`;
    })
    .join("; ");
}

/**
 * Parses and validates a prompts JSONL file. Blank lines are skipped; a
 * UTF-8 BOM and CRLF line ends are accepted.
 * @param path the file's path, for the error only.
 * @param data the file's bytes (a line that is not UTF-8 is reported), or its text.
 * @returns the prompts in file order.
 * @throws InputFileError listing every bad line (over `limits.maxLineBytes`,
 *   not UTF-8, invalid JSON, a field that fails validation, a duplicate id,
 *   a limit exceeded) with its 1-based
 *   number, or line 0 when the file holds no prompt at all. Meant to be shown
 *   to the user before anything runs.
 */
export function parsePromptsJsonl(path: string, data: string | Uint8Array, limits: PromptLimits = {}): PromptSpec[] {
  return parsePromptLines(path, data, limits, {
    schema: promptLineSchema,
    describeIssues,
    toSpec: (p, line) => promptSpecOf(p.id, line, p),
    idField: "id",
    maxTokensField: "max_tokens",
    noun: "prompts",
  });
}

/**
 * Request-wide sampling of a Generate call; a prompt's own fields override
 * it. Unset fields are sent as 0, which the coordinator reads as unset.
 */
export interface GenerateSampling {
  /** Most tokens generated per prompt. @default the coordinator's default */
  maxTokens?: number;
  /** Sampling temperature (>= 0; 0 = greedy). @default 0 */
  temperature?: number;
  /** Nucleus mass in (0, 1]. @default the coordinator's default */
  topP?: number;
  /** Sampler seed, a non-negative integer. @default a time-based seed chosen by the coordinator */
  seed?: number;
}

/** A KV placement as the wire's `tessera.v1.KvPlacement`. */
export function wireKvPlacement(kv: KvPlacement): WireKvPlacement {
  return kv === "memory" ? WireKvPlacement.MEMORY : kv === "storage" ? WireKvPlacement.STORAGE : WireKvPlacement.AUTO;
}

/**
 * The Generate request of a prompts file: each spec becomes a PromptInput
 * (its unset options left unset, so `sampling` applies), `sampling` the
 * request's SamplingParams (unset fields sent as 0, meaning unset), and
 * `fields` adds the rest (`jobId`, `kv`, `modelPath`, `tokenizerPath`).
 * Used by `tessera run` and the coordinator's job worker, so a batch job
 * samples exactly what a direct run of its file does.
 * @throws RangeError when a seed is not an integer (BigInt of it).
 */
export function generateRequest(
  prompts: readonly PromptSpec[],
  sampling: GenerateSampling,
  fields: { jobId?: string; kv?: WireKvPlacement; modelPath?: string; tokenizerPath?: string; priority?: string } = {},
): MessageInitShape<typeof GenerateRequestSchema> {
  return {
    ...fields,
    prompts: prompts.map((p) => ({
      id: p.id,
      prompt: p.prompt,
      maxTokens: p.maxTokens,
      temperature: p.temperature,
      topP: p.topP,
      seed: p.seed === undefined ? undefined : BigInt(p.seed),
      kv: p.kv === undefined ? undefined : wireKvPlacement(p.kv),
    })),
    sampling: {
      maxTokens: sampling.maxTokens ?? 0,
      temperature: sampling.temperature ?? 0,
      topP: sampling.topP ?? 0,
      seed: BigInt(sampling.seed ?? 0),
    },
  };
}
