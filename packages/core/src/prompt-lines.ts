/**
 * The line loop both batch input formats share (Tessera's prompts JSONL and
 * the OpenAI Batch API's): split into lines, parse and validate each, check
 * ids and limits, and report every bad line at once. Internal to core: the
 * public parsers are `parsePromptsJsonl` and `parseOpenAiBatchJsonl`.
 */
import type { z } from "zod";
import { InputFileError, type BadLine } from "./errors.js";
import type { KvPlacement, PromptLimits, PromptSpec } from "./prompts.js";

/** What differs between the two formats: the line's schema and the words of the messages. */
export interface PromptLineFormat<T> {
  /** Validates one line's parsed JSON. */
  schema: z.ZodType<T>;
  /** One readable message for a line that fails `schema` (`value` is the line's parsed JSON). */
  describeIssues(error: z.ZodError, value: unknown): string;
  /** The spec of a validated line (`line` is its 1-based number). */
  toSpec(value: T, line: number): PromptSpec;
  /** The id field as messages name it: "id", "custom_id". */
  idField: string;
  /** The max-tokens field as messages name it: "max_tokens", "body.max_tokens". */
  maxTokensField: string;
  /** What one line holds, plural, as messages say it: "prompts", "requests". */
  noun: string;
}

/**
 * Parses a JSONL batch input file's text line by line with `format`. Blank
 * lines are skipped; a UTF-8 BOM and CRLF line ends are accepted. Each
 * non-blank line is checked in this order, and only its first fault is
 * reported: JSON, `format.schema`, a duplicate id, `limits.maxTokens`, then
 * `limits.maxPrompts` (counting every non-blank line, bad ones included).
 * @param path the file's name, for the error only.
 * @returns the specs in file order.
 * @throws InputFileError listing every bad line with its 1-based number, or
 *   line 0 when the file holds nothing at all.
 */
export function parsePromptLines<T>(
  path: string,
  text: string,
  limits: PromptLimits,
  format: PromptLineFormat<T>,
): PromptSpec[] {
  const bad: BadLine[] = [];
  const prompts: PromptSpec[] = [];
  const firstLineOfId = new Map<string, number>();
  let count = 0;
  text
    .replace(/^\uFEFF/, "")
    .split("\n")
    .forEach((raw, i) => {
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
      const parsed = format.schema.safeParse(value);
      if (!parsed.success) {
        bad.push({ line, message: format.describeIssues(parsed.error, value) });
        return;
      }
      const spec = format.toSpec(parsed.data, line);
      const seen = firstLineOfId.get(spec.id);
      if (seen !== undefined) {
        bad.push({ line, message: `duplicate ${format.idField} "${spec.id}" (first on line ${seen})` });
        return;
      }
      firstLineOfId.set(spec.id, line);
      if (limits.maxTokens !== undefined && spec.maxTokens !== undefined && spec.maxTokens > limits.maxTokens) {
        bad.push({
          line,
          message: `field "${format.maxTokensField}": ${spec.maxTokens} exceeds the limit ${limits.maxTokens}`,
        });
        return;
      }
      if (limits.maxPrompts !== undefined && count > limits.maxPrompts) {
        bad.push({ line, message: `more than ${limits.maxPrompts} ${format.noun}` });
        return;
      }
      prompts.push(spec);
    });
  if (bad.length === 0 && prompts.length === 0) bad.push({ line: 0, message: `the file holds no ${format.noun}` });
  if (bad.length > 0) throw new InputFileError(path, bad);
  return prompts;
}

/** A validated line's prompt and options, in the snake_case both formats use. */
export interface PromptLineFields {
  prompt: string;
  max_tokens?: number | undefined;
  temperature?: number | undefined;
  top_p?: number | undefined;
  seed?: number | undefined;
  kv?: KvPlacement | undefined;
}

/** The spec of one validated line: `id`, its 1-based `line`, and the options it sets (unset ones stay absent). */
export function promptSpecOf(id: string, line: number, f: PromptLineFields): PromptSpec {
  const spec: PromptSpec = { id, prompt: f.prompt, line };
  if (f.max_tokens !== undefined) spec.maxTokens = f.max_tokens;
  if (f.temperature !== undefined) spec.temperature = f.temperature;
  if (f.top_p !== undefined) spec.topP = f.top_p;
  if (f.seed !== undefined) spec.seed = f.seed;
  if (f.kv !== undefined) spec.kv = f.kv;
  return spec;
}
