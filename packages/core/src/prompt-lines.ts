/**
 * The line loop both batch input formats share (Tessera's prompts JSONL and
 * the OpenAI Batch API's): split into lines, parse and validate each, check
 * ids and limits, and report every bad line at once. The public parsers are
 * `parsePromptsJsonl` and `parseOpenAiBatchJsonl`; core exports the line
 * reader ({@link promptFileLines}) and its defaults too.
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
 * Defaults of reading a prompts or batch file. `maxLineBytes` (1 MiB) bounds
 * one line before it is decoded or parsed, so a huge line is refused naming
 * its line instead of failing later at the wire's message size: it is 16
 * times the coordinator's default limit of one prompt's text (64 KiB,
 * `maxPromptBytes`), room for that prompt JSON-escaped at up to 6 bytes a
 * byte (`\u0000`) and its other fields.
 */
export const PROMPT_FILE_DEFAULTS = Object.freeze({ maxLineBytes: 1024 * 1024 });

/** One non-blank line of a prompts file: its text, or why it cannot be read (its content is never echoed). */
export type PromptFileLine = { line: number; source: string } | { line: number; fault: string };

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * The 0-based offset of the first byte of `bytes` that is not valid UTF-8
 * (found by a lenient decode: the first U+FFFD that is not a literal
 * EF BF BD in the input), or -1 when every byte is valid.
 */
function firstBadUtf8Byte(bytes: Uint8Array): number {
  const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
  let at = 0;
  let prev = 0;
  for (let i = text.indexOf("\uFFFD"); i >= 0; i = text.indexOf("\uFFFD", i + 1)) {
    at += Buffer.byteLength(text.slice(prev, i), "utf8");
    if (bytes[at] !== 0xef || bytes[at + 1] !== 0xbf || bytes[at + 2] !== 0xbd) return at;
    at += 3;
    prev = i + 1;
  }
  return -1;
}

/**
 * The non-blank lines of a prompts or batch file, lazily, in file order.
 * A UTF-8 BOM and CRLF line ends are accepted. A line longer than
 * `maxLineBytes` (bytes of UTF-8, line end excluded) yields a fault before
 * it is decoded; given bytes, a line that is not valid UTF-8 yields a fault
 * naming the first bad byte's 1-based column (given a string, the text was
 * decoded already and cannot be checked: pass the file's bytes).
 */
export function* promptFileLines(data: string | Uint8Array, maxLineBytes: number): Generator<PromptFileLine> {
  const tooLong = (n: number) => `${n} bytes is over the limit of ${maxLineBytes} bytes per line`;
  if (typeof data === "string") {
    const lines = data.replace(/^\uFEFF/, "").split("\n");
    for (const [i, raw] of lines.entries()) {
      const source = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (source.trim() === "") continue;
      const n = Buffer.byteLength(source, "utf8");
      yield n > maxLineBytes ? { line: i + 1, fault: tooLong(n) } : { line: i + 1, source };
    }
    return;
  }
  let start = data[0] === 0xef && data[1] === 0xbb && data[2] === 0xbf ? 3 : 0;
  for (let line = 1; start <= data.length; line++) {
    const nl = data.indexOf(0x0a, start);
    const end = nl < 0 ? data.length : nl;
    const bytes = data.subarray(start, end > start && data[end - 1] === 0x0d ? end - 1 : end);
    start = end + 1;
    if (bytes.length > maxLineBytes) {
      yield { line, fault: tooLong(bytes.length) };
      continue;
    }
    let source: string;
    try {
      source = utf8.decode(bytes);
    } catch {
      yield { line, fault: `not valid UTF-8 (byte ${firstBadUtf8Byte(bytes) + 1} of the line)` };
      continue;
    }
    if (source.trim() !== "") yield { line, source };
  }
}

/**
 * Parses a JSONL batch input file line by line with `format`. Blank
 * lines are skipped; a UTF-8 BOM and CRLF line ends are accepted. Each
 * non-blank line is checked in this order, and only its first fault is
 * reported: its length (`limits.maxLineBytes`, default
 * {@link PROMPT_FILE_DEFAULTS}) and, given bytes, UTF-8 (see
 * {@link promptFileLines}), JSON, `format.schema`, a duplicate id,
 * `limits.maxTokens`, then `limits.maxPrompts` (counting every non-blank
 * line, bad ones included).
 * @param path the file's name, for the error only.
 * @param data the file's bytes (checked as UTF-8), or its text.
 * @returns the specs in file order.
 * @throws InputFileError listing every bad line with its 1-based number, or
 *   line 0 when the file holds nothing at all.
 */
export function parsePromptLines<T>(
  path: string,
  data: string | Uint8Array,
  limits: PromptLimits,
  format: PromptLineFormat<T>,
): PromptSpec[] {
  const bad: BadLine[] = [];
  const prompts: PromptSpec[] = [];
  const firstLineOfId = new Map<string, number>();
  let count = 0;
  for (const fileLine of promptFileLines(data, limits.maxLineBytes ?? PROMPT_FILE_DEFAULTS.maxLineBytes)) {
    const { line } = fileLine;
    count++;
    if ("fault" in fileLine) {
      bad.push({ line, message: fileLine.fault });
      continue;
    }
    let value: unknown;
    try {
      value = JSON.parse(fileLine.source);
    } catch (err) {
      bad.push({ line, message: `invalid JSON: ${(err as Error).message}` });
      continue;
    }
    const parsed = format.schema.safeParse(value);
    if (!parsed.success) {
      bad.push({ line, message: format.describeIssues(parsed.error, value) });
      continue;
    }
    const spec = format.toSpec(parsed.data, line);
    const seen = firstLineOfId.get(spec.id);
    if (seen !== undefined) {
      bad.push({ line, message: `duplicate ${format.idField} "${spec.id}" (first on line ${seen})` });
      continue;
    }
    firstLineOfId.set(spec.id, line);
    if (limits.maxTokens !== undefined && spec.maxTokens !== undefined && spec.maxTokens > limits.maxTokens) {
      bad.push({
        line,
        message: `field "${format.maxTokensField}": ${spec.maxTokens} exceeds the limit ${limits.maxTokens}`,
      });
      continue;
    }
    if (limits.maxPrompts !== undefined && count > limits.maxPrompts) {
      bad.push({ line, message: `more than ${limits.maxPrompts} ${format.noun}` });
      continue;
    }
    prompts.push(spec);
  }
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
