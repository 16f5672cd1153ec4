/**
 * createSequences (engine/prompts.ts) tokenises a request's prompts with a
 * turn of the event loop between them and stops when the job is cancelled
 * (issue 13: one large request kept the coordinator from answering anything).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { createTokenizer } from "@tessera/model";
import { Code, GenerateRequestSchema, RpcError } from "@tessera/proto";
import type { BatchJob } from "../src/engine/context.js";
import type { Output } from "../src/engine/output.js";
import { createSequences } from "../src/engine/prompts.js";

/** A job of `n` prompts on a byte-level vocabulary, with only what createSequences reads. */
function fakeJob(n: number, signal: AbortSignal): { job: BatchJob; output: Output } {
  const pieces = ["<unk>", "\n<s>\n", "\n</s>\n", " "];
  for (let b = 0; b < 256; b++) pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  const tokenizer = createTokenizer(pieces, new Array<number>(pieces.length).fill(0));
  const request = create(GenerateRequestSchema, {
    prompts: Array.from({ length: n }, (_, i) => ({ id: `p${i}`, prompt: `prompt ${i}` })),
    sampling: { maxTokens: 4, seed: 7n },
  });
  const ctx = {
    model: { header: { shape: { seqLen: 64, vocabSize: pieces.length } }, tokenizer },
    signal,
  } as unknown as BatchJob["ctx"];
  const job: BatchJob = { request, ctx, jobId: "job", nonce: "n", groups: 1, seqs: [] } as unknown as BatchJob;
  const output = { promptTokens: 0, finish: () => undefined } as unknown as Output;
  return { job, output };
}

test("createSequences lets the event loop turn between prompts", async () => {
  const { job, output } = fakeJob(20, new AbortController().signal);
  let turns = 0;
  let done = false;
  const tick = (): void => {
    turns++;
    if (!done) setImmediate(tick);
  };
  setImmediate(tick);
  const pending = createSequences(job, output);
  // Before issue 13 this was synchronous: every prompt was read before any other callback ran.
  await pending;
  done = true;
  assert.equal(job.seqs.length, 20);
  assert.ok(turns >= 19, `the event loop turned ${turns} times while 20 prompts were tokenised`);
  assert.deepEqual(
    job.seqs.map((s) => s.promptIds.length),
    job.request.prompts.map((p) => 2 + Buffer.byteLength(p.prompt)), // BOS, " ", one byte token each
  );
});

test("createSequences stops with CANCELLED when the job's signal aborts", async () => {
  const abort = new AbortController();
  const { job, output } = fakeJob(50, abort.signal);
  const pending = createSequences(job, output);
  // Abort once three prompts are in.
  const watch = (): void => {
    if (job.seqs.length >= 3) abort.abort();
    else setImmediate(watch);
  };
  setImmediate(watch);
  await assert.rejects(pending, (err: unknown) => err instanceof RpcError && err.code === Code.CANCELLED);
  assert.ok(job.seqs.length < 50, `${job.seqs.length} of 50 prompts were tokenised after the cancel`);
});
