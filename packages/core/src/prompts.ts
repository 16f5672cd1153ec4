/**
 * Tessera's prompts input: JSON Lines, one object per non-blank line:
 * `{"id": "s01", "prompt": "Once upon a time", "max_tokens": 64,
 *   "temperature": 0.8, "top_p": 0.9, "seed": 42, "kv": "memory"}`.
 * Only `id` and `prompt` are required; unset options take the job's
 * defaults. Unknown fields are rejected so that a misspelt option
 * (`"max_token"`) is not silently ignored.
 */
import { z } from "zod";
import { InputFileError, type BadLine } from "./errors.js";

/** Where a sequence's KV cache goes: RAM of a memory-node, disk of a storage-node, or the planner's choice. */
export type KvPlacement = "memory" | "storage" | "auto";

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
 * Parses and validates a prompts JSONL file's text. Blank lines are skipped;
 * a UTF-8 BOM and CRLF line ends are accepted.
 * @param path the file's path, for the error only.
 * @returns the prompts in file order.
 * @throws InputFileError listing every bad line (invalid JSON, a field that
 *   fails validation, a duplicate id, a limit exceeded) with its 1-based
 *   number, or line 0 when the file holds no prompt at all. Meant to be shown
 *   to the user before anything runs.
 */
export function parsePromptsJsonl(path: string, text: string, limits: PromptLimits = {}): PromptSpec[] {
  const bad: BadLine[] = [];
  const prompts: PromptSpec[] = [];
  const firstLineOfId = new Map<string, number>();
  const lines = text.replace(/^\uFEFF/, "").split("\n");
  let count = 0;
  lines.forEach((raw, i) => {
    const line = i + 1;
    const source = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (source.trim() === "") return;
    count++;
    let value: unknown;
    try {
      value = JSON.parse(source);
    } catch (err) {
      bad.push({ line, message: `invalid JSON: ${(err as Error).message}` });
      return;
    }
    const parsed = promptLineSchema.safeParse(value);
    if (!parsed.success) {
      bad.push({ line, message: describeIssues(parsed.error, value) });
      return;
    }
    const p = parsed.data;
    const seen = firstLineOfId.get(p.id);
    if (seen !== undefined) {
      bad.push({ line, message: `duplicate id "${p.id}" (first on line ${seen})` });
      return;
    }
    firstLineOfId.set(p.id, line);
    if (limits.maxTokens !== undefined && p.max_tokens !== undefined && p.max_tokens > limits.maxTokens) {
      bad.push({ line, message: `field "max_tokens": ${p.max_tokens} exceeds the limit ${limits.maxTokens}` });
      return;
    }
    if (limits.maxPrompts !== undefined && count > limits.maxPrompts) {
      bad.push({ line, message: `more than ${limits.maxPrompts} prompts` });
      return;
    }
    const spec: PromptSpec = { id: p.id, prompt: p.prompt, line };
    if (p.max_tokens !== undefined) spec.maxTokens = p.max_tokens;
    if (p.temperature !== undefined) spec.temperature = p.temperature;
    if (p.top_p !== undefined) spec.topP = p.top_p;
    if (p.seed !== undefined) spec.seed = p.seed;
    if (p.kv !== undefined) spec.kv = p.kv;
    prompts.push(spec);
  });
  if (bad.length === 0 && prompts.length === 0) bad.push({ line: 0, message: "the file holds no prompts" });
  if (bad.length > 0) throw new InputFileError(path, bad);
  return prompts;
}
