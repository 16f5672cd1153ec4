/**
 * Dense profile of an execution provider (issue 4, item 1): timed MatMuls
 * at a few batch sizes, for the scheduler's `denseFigures`.
 */
import type { DenseSample } from "@tessera/scheduler";

/**
 * Times dense MatMuls x [batch, k] × W [k, n] at each of `batches` with the
 * caller's `time` (seconds of one run, e.g. the best of a few onnxruntime
 * session runs), for `denseFigures` (@tessera/scheduler). Pick k·n·weightBytes well above
 * the last-level cache so batch 1 streams weights from memory.
 */
export async function profileDense(
  time: (batch: number, k: number, n: number) => Promise<number>,
  batches: readonly number[] = [1, 16, 64],
  k = 2048,
  n = 5632,
): Promise<DenseSample[]> {
  const out: DenseSample[] = [];
  for (const batch of batches) out.push({ batch, k, n, seconds: await time(batch, k, n) });
  return out;
}
