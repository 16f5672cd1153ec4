/**
 * The plain data that passes between the engine's phases (as vLLM v1's
 * `SchedulerOutput` and `ModelRunnerOutput`): the scheduler's plan of one
 * step, and the split of the gpu-node's logits into each sequence's rows.
 */
import type { Sequence } from "./sequence.js";

/** One sequence's share of a step. */
export interface StepPart {
  readonly seq: Sequence;
  /** The sequence's seqId when the step was planned: a sequence moved meanwhile ignores the step's answer. */
  readonly seqId: string;
  /** Position of the first token. */
  readonly startPos: number;
  /** Tokens fed at startPos, startPos + 1, ... (a prefill chunk, or the last sampled token). */
  readonly tokens: readonly number[];
  /**
   * Logit rows wanted: those of the last `nLogitRows` new positions
   * (1 <= nLogitRows <= tokens.length). Plain decoding samples from the
   * last; speculative decoding and prompt scoring want more.
   */
  readonly nLogitRows: number;
}

/** What the scheduler plans for one step. */
export interface StepPlan {
  /** Every part is a decode (its prompt, and any rebuild, is in). */
  readonly isDecode: boolean;
  readonly parts: readonly StepPart[];
}

/** Logit rows a part gets back: max(1, nLogitRows), as the gpu-node counts them (n_logit_rows 0 means 1). */
export function logitRowsOf(part: Pick<StepPart, "nLogitRows">): number {
  return Math.max(1, part.nLogitRows);
}

/**
 * Splits `logits` [Σ rows, vocabSize] f32 (each part's rows in part order,
 * positions in order) into each part's rows, each a view [vocabSize].
 * Returns undefined when the length is not Σ rows × vocabSize.
 */
export function splitLogitRows(
  logits: Float32Array,
  parts: readonly Pick<StepPart, "nLogitRows">[],
  vocabSize: number,
): Float32Array[][] | undefined {
  const total = parts.reduce((n, p) => n + logitRowsOf(p), 0);
  if (logits.length !== total * vocabSize) return undefined;
  let row = 0;
  return parts.map((p) =>
    Array.from({ length: logitRowsOf(p) }, () => {
      const r = logits.subarray(row * vocabSize, (row + 1) * vocabSize);
      row++;
      return r;
    }),
  );
}
