/**
 * Bounds on the sizes a model file declares. Every size read from a file is
 * checked against them (and against the file's own size, where the file
 * implies it) before anything is allocated from it, so a damaged or hostile
 * header cannot make a node allocate without bound: a llama2.c header's
 * seq_len, or a config.json's max_position_embeddings, sizes per-position
 * tables (RoPE) and caches, which no tensor in the file bounds.
 */
import { CheckpointError } from "@tessera/core";

/** The documented maxima of sizes a model file declares. */
export const MODEL_LIMITS = Object.freeze({
  /** Most positions a model may declare (seq_len, max_position_embeddings): 1,048,576. */
  maxSeqLen: 1 << 20,
  /** Most of any other dimension (dim, hidden_dim, layers, heads, head_dim, vocab_size): 2^24 - 1. */
  maxDimension: (1 << 24) - 1,
  /**
   * Most ids a model's vocab_size may exceed its tokenizer.json by (padded
   * embeddings, e.g. Qwen2's 151,936 rows for 151,665 tokens): this fraction
   * of vocab_size, and at least {@link MODEL_LIMITS.minVocabPadding}.
   */
  maxVocabPaddingFraction: 1 / 64,
  /** Ids a vocab_size may always exceed its tokenizer.json by. */
  minVocabPadding: 128,
});

/**
 * Checks that `value` of `field` in file `path` is an integer in [1, max].
 * @throws CheckpointError naming the file and the field (with its value only).
 */
export function checkModelSize(path: string, field: string, value: unknown, max: number): number {
  if (!(typeof value === "number" && Number.isInteger(value) && value > 0)) {
    throw new CheckpointError(path, `${field} = ${shown(value)} is not a positive integer`);
  }
  if (value > max) throw new CheckpointError(path, `${field} = ${value} exceeds the maximum ${max}`);
  return value;
}

/**
 * Checks that `value` of `field` in file `path` is a finite number above 0.
 * @throws CheckpointError naming the file and the field (with its value only).
 */
export function checkPositiveNumber(path: string, field: string, value: unknown): number {
  if (!(typeof value === "number" && Number.isFinite(value) && value > 0)) {
    throw new CheckpointError(path, `${field} = ${shown(value)} is not a positive finite number`);
  }
  return value;
}

/** A field's value for an error: its JSON, cut to 40 characters (no more of the file is echoed). */
export function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}
