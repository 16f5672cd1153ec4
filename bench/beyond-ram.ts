/**
 * Beyond RAM (issue 3): with the memory-node capped at 256 MiB of KV, a
 * batch whose KV caches add up to 2 GiB runs to completion with its caches
 * on the storage-node. Uses {@link NARROW_KV64K} (same 64 KiB of KV per
 * position as the 2048-wide model, narrow dense layers) so the 32K
 * positions of prefill take minutes on a 2-core machine.
 */
import { KvPlacement, type Summary } from "@tessera/proto";
import { kvBytesPerPosition } from "@tessera/core";
import { generate } from "@tessera/testing";
import {
  NARROW_KV64K,
  benchTokenizer,
  ensureModel,
  progress,
  promptsOfLength,
  startBenchCluster,
  type BenchOptions,
} from "./common.js";

/** Memory-node KV capacity in this run. */
export const MEMORY_CAP_BYTES = 256 * 2 ** 20;

/** What the beyond-RAM run measured. */
export interface BeyondRamResult {
  sequences: number;
  /** KV positions per sequence at the end (prompt + generated - 1). */
  positions: number;
  /** KV bytes of the batch when every sequence has run to the end: what was reserved on the storage-node. */
  kvBytes: number;
  /** KV bytes actually written (sequences that stopped at EOS write fewer). */
  kvBytesWritten: number;
  /** Sequences whose KV cache was on the storage-node. */
  onStorage: number;
  generatedTokens: number;
  wallSeconds: number;
  /** Prefill (prompt tokens ÷ time to the first decode step), tokens/s. */
  prefillTokensPerSecond: number;
  summary: Summary;
}

/**
 * Runs the beyond-RAM batch: `sequences` prompts of `positions - gen + 1`
 * tokens each generating `gen` tokens greedily, KV placed on the
 * storage-node (kv STORAGE; the memory-node, capped at 256 MiB, could hold
 * 1/8 of it), with the coordinator's running batch large enough to hold
 * them all at once.
 */
export async function runBeyondRam(o: BenchOptions): Promise<BeyondRamResult> {
  const model = await ensureModel(NARROW_KV64K, o.cacheDir);
  const perPosition = kvBytesPerPosition(NARROW_KV64K.shape);
  const positions = 128;
  const totalBytes = o.quick ? 2 ** 29 : 2 ** 31;
  const sequences = totalBytes / perPosition / positions;
  const gen = o.quick ? 8 : 16;
  const promptTokens = positions - gen + 1;
  const tokenizer = await benchTokenizer();
  const texts = promptsOfLength(tokenizer, sequences, promptTokens);
  const cluster = await startBenchCluster(
    model,
    {
      memory: ["--capacity", String(MEMORY_CAP_BYTES)],
      coordinator: ["--max-batch", String(sequences)],
    },
    o,
  );
  try {
    await generate(cluster.address, { prompts: [{ id: "warm", prompt: "Hi" }], sampling: { maxTokens: 2 } });
    progress(
      `beyond RAM: ${sequences} sequences x ${positions} positions = ${(totalBytes / 2 ** 30).toFixed(2)} GiB of KV on the storage-node ` +
        `(memory-node capped at ${MEMORY_CAP_BYTES / 2 ** 20} MiB)`,
    );
    let lastLog = 0;
    const res = await generate(
      cluster.address,
      {
        prompts: texts.map((prompt, i) => ({ id: `s${i}`, prompt })),
        sampling: { temperature: 0, maxTokens: gen },
        kv: KvPlacement.STORAGE,
      },
      (ev) => {
        if (ev.event.case !== "progress" || performance.now() - lastLog < 15_000) return;
        lastLog = performance.now();
        const p = ev.event.value;
        progress(
          `  ${p.elapsedSeconds.toFixed(0)} s: ${p.tokensGenerated} tokens generated, ${p.promptsDone} prompts done`,
        );
      },
    );
    const summary = res.summary;
    if (!summary) throw new Error("the coordinator sent no summary");
    const results = [...res.results.values()];
    const failed = results.filter((r) => r.finishReason === "error");
    if (failed.length > 0) throw new Error(`${failed.length} sequences failed: ${failed[0]!.error}`);
    const written = results.reduce((a, r) => a + r.promptTokenIds.length + r.completionTokenIds.length - 1, 0);
    const prefillSeconds = Math.max(...results.map((r) => r.timings?.prefillSeconds ?? 0));
    return {
      sequences,
      positions,
      kvBytes: totalBytes,
      kvBytesWritten: written * perPosition,
      onStorage: results.filter((r) => r.kvNode.startsWith("storage")).length,
      generatedTokens: Number(summary.completionTokens),
      wallSeconds: summary.wallSeconds,
      prefillTokensPerSecond: Number(summary.promptTokens) / prefillSeconds,
      summary,
    };
  } finally {
    await cluster.stop();
  }
}
