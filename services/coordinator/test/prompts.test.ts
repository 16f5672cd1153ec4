/**
 * createSequences (engine/prompts.ts) tokenises a request's prompts on the
 * coordinator's tokeniser pool, off the event loop, and stops when the job
 * is cancelled (issue 13: one large request kept the coordinator from
 * answering anything). Real worker threads and the bundled tok512.bin.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { bundled, loadTokenizer, type Tokenizer } from "@tessera/model";
import { Code, GenerateRequestSchema, RpcError } from "@tessera/proto";
import { STORY_OPENINGS, storyText } from "@tessera/testing";
import type { BatchJob } from "../src/engine/context.js";
import type { Output } from "../src/engine/output.js";
import { createSequences } from "../src/engine/prompts.js";
import { TokenizerPool } from "../src/tokenize/tokenizer-pool.js";

const VOCAB = 512;
/** About `kb` KB of story text. */
const storyOf = (kb: number): string => storyText(kb * 1024);

/** A job of `prompts` on tok512.bin, with only what createSequences reads; its prompts go through `pool`. */
async function fakeJob(
  prompts: string[],
  signal: AbortSignal,
  pool: TokenizerPool,
): Promise<{ job: BatchJob; output: Output; tokenizer: Tokenizer; errors: string[] }> {
  const tokenizer = await loadTokenizer(bundled.tokenizer, VOCAB);
  const request = create(GenerateRequestSchema, {
    prompts: prompts.map((prompt, i) => ({ id: `p${i}`, prompt })),
    sampling: { maxTokens: 4, seed: 7n },
  });
  const ctx = {
    model: { header: { shape: { seqLen: 64, vocabSize: VOCAB } }, tokenizer },
    signal,
    encodePrompts: (texts: readonly string[]) =>
      pool.encode({ tokenizerPath: bundled.tokenizer, vocabSize: VOCAB }, texts, { tenant: "t", signal }),
  } as unknown as BatchJob["ctx"];
  const job: BatchJob = { request, ctx, jobId: "job", nonce: "n", groups: 1, seqs: [] } as unknown as BatchJob;
  const errors: string[] = [];
  const output = {
    promptTokens: 0,
    finish: (_s: unknown, reason: string, message?: string) => {
      if (reason === "error") errors.push(message ?? "");
    },
  } as unknown as Output;
  return { job, output, tokenizer, errors };
}

test("createSequences tokenises off the event loop: it stays responsive, the ids are unchanged", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  // One 2 MB prompt (about 2 s of encode on one core) and 50 of 60 KB, as one tenant's request.
  const prompts = [storyOf(2048), ...Array.from({ length: 50 }, () => storyOf(60)), ...STORY_OPENINGS];
  const { job, output, tokenizer, errors } = await fakeJob(prompts, new AbortController().signal, pool);
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  await sleep(50); // the monitor's first ticks: it measures from its last one
  await createSequences(job, output);
  delay.disable();
  // Before issue 13 the 2 MB prompt's encode ran on the event loop: no callback for seconds.
  assert.ok(delay.max < 1e9, `the event loop was held ${(delay.max / 1e6).toFixed(0)} ms at once`);
  assert.equal(job.seqs.length, prompts.length);
  assert.deepEqual(
    job.seqs.map((s) => s.promptIds),
    prompts.map((p) => tokenizer.encode(p, { bos: true, eos: false })),
  );
  // Longer than the context of 64: an error Result each, the story openings not.
  assert.equal(errors.length, 51);
  assert.match(errors[0]!, /^prompt is \d+ tokens; the model's context is 64 positions$/);
});

test("createSequences stops with CANCELLED when the job's signal aborts, and its tokenising stops", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  const abort = new AbortController();
  const { job, output } = await fakeJob(
    Array.from({ length: 50 }, () => storyOf(60)),
    abort.signal,
    pool,
  );
  const pending = createSequences(job, output);
  setTimeout(() => abort.abort(), 50);
  await assert.rejects(pending, (err: unknown) => err instanceof RpcError && err.code === Code.CANCELLED);
  assert.equal(job.seqs.length, 0, "no sequence was set up after the cancel");
  assert.equal(pool.stats().queued, 0, "the job's queued tokenise tasks were dropped");
});
