/**
 * The engine's step bookkeeping without a gpu-node: a step plan whose parts
 * ask several logit rows sets n_logit_rows on the wire, and the gpu-node's
 * logits [Σ rows, vocab_size] are split into each sequence's rows.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Code,
  ForwardRequestSchema,
  ForwardResponseSchema,
  NodeErrorReason,
  create,
  type ForwardRequest,
  type MessageInitShape,
} from "@tessera/proto";
import { f32Tensor } from "@tessera/core";
import {
  SequenceState,
  StepExecutor,
  needsReload,
  logitRowsOf,
  splitLogitRows,
  type BatchContext,
  type BatchJob,
  type Sequence,
  type StepPart,
} from "../src/engine/index.js";
import { createSequence } from "../src/engine/sequence.js";
import { compileCoordinatorOptions } from "../src/options.js";

const VOCAB = 4;

/** logits whose row r is [r*10, r*10+1, r*10+2, r*10+3]. */
function numberedRows(rows: number): Float32Array {
  return Float32Array.from({ length: rows * VOCAB }, (_, i) => Math.floor(i / VOCAB) * 10 + (i % VOCAB));
}

test("rows of a part are max(1, nLogitRows); logits split by each part's count, in order", () => {
  assert.equal(logitRowsOf({ nLogitRows: 0 }), 1);
  assert.equal(logitRowsOf({ nLogitRows: 1 }), 1);
  assert.equal(logitRowsOf({ nLogitRows: 3 }), 3);
  const parts = [{ nLogitRows: 1 }, { nLogitRows: 3 }, { nLogitRows: 0 }];
  const rows = splitLogitRows(numberedRows(5), parts, VOCAB)!;
  assert.deepEqual(
    rows.map((r) => r.map((row) => row[0])),
    [[0], [10, 20, 30], [40]],
  );
  assert.deepEqual([...rows[1]![2]!], [30, 31, 32, 33]);
  // A length that is not Σ rows × vocab_size: no split.
  assert.equal(splitLogitRows(numberedRows(4), parts, VOCAB), undefined);
  assert.equal(splitLogitRows(numberedRows(6), parts, VOCAB), undefined);
});

/** A job of `n` running sequences on one memory-node, whose gpu-node answers `answer(request)`. */
function fakeJob(n: number, answer: (req: ForwardRequest) => ReturnType<typeof create<typeof ForwardResponseSchema>>) {
  const sent: ForwardRequest[] = [];
  const ctx = {
    options: compileCoordinatorOptions({ gpuNodes: ["127.0.0.1:1"], memoryNodes: ["127.0.0.1:2"], log: () => {} }),
    model: { header: { shape: { vocabSize: VOCAB } } },
    gpu: {
      address: "127.0.0.1:1",
      step: async (init: MessageInitShape<typeof ForwardRequestSchema>) => {
        const req = create(ForwardRequestSchema, init);
        sent.push(req);
        return answer(req);
      },
    },
    signal: new AbortController().signal,
    reloadStage: async () => {},
  } as unknown as BatchContext;
  const seqs: Sequence[] = Array.from({ length: n }, (_, i) => {
    const s = createSequence(i, `p${i}`, "", `job-x-${i}`);
    s.state = SequenceState.Running;
    s.shards = [
      { node: { role: "memory", address: "127.0.0.1:2" }, kvHeadStart: 0, kvHeadEnd: 1, seqId: s.seqId, opened: true },
    ];
    return s;
  });
  const job: BatchJob = { request: {} as BatchJob["request"], ctx, jobId: "job", nonce: "x", groups: 1, seqs };
  return { job, seqs, sent };
}

test("a step with several logit rows for a sequence: n_logit_rows on the wire, the rows split per sequence", async () => {
  const { job, seqs, sent } = fakeJob(3, (req) => {
    const rows = req.sequences.reduce((t, s) => t + Math.max(1, s.nLogitRows), 0);
    return create(ForwardResponseSchema, { logits: f32Tensor(numberedRows(rows), [rows, VOCAB]) });
  });
  const parts: StepPart[] = [
    { seq: seqs[0]!, seqId: seqs[0]!.seqId, startPos: 5, tokens: [7], nLogitRows: 1 },
    { seq: seqs[1]!, seqId: seqs[1]!.seqId, startPos: 3, tokens: [1, 2, 3, 4], nLogitRows: 4 },
    { seq: seqs[2]!, seqId: seqs[2]!.seqId, startPos: 0, tokens: [8, 9], nLogitRows: 1 },
  ];
  const executor = new StepExecutor(job);
  const outcome = await executor.execute(parts, false);
  assert.equal(outcome.kind, "ok");
  if (outcome.kind !== "ok") return;
  const req = sent[0]!;
  assert.deepEqual(
    req.sequences.map((s) => [s.seqId, s.startPos, s.nTokens, s.nLogitRows, s.attentionAddress]),
    [
      ["job-x-0", 5, 1, 0, "127.0.0.1:2"],
      ["job-x-1", 3, 4, 4, "127.0.0.1:2"],
      ["job-x-2", 0, 2, 0, "127.0.0.1:2"],
    ],
  );
  assert.deepEqual(req.tokens, [7, 1, 2, 3, 4, 8, 9]);
  assert.deepEqual(
    outcome.rows.map((r) => r.map((row) => row[0])),
    [[0], [10, 20, 30, 40], [50]],
  );
  assert.equal(executor.stepId, 1n);
});

test("logits of the wrong shape fail the step", async () => {
  const { job, seqs } = fakeJob(2, () =>
    create(ForwardResponseSchema, { logits: f32Tensor(numberedRows(2), [2, VOCAB]) }),
  );
  const parts: StepPart[] = seqs.map((s) => ({ seq: s, seqId: s.seqId, startPos: 0, tokens: [1], nLogitRows: 2 }));
  const outcome = await new StepExecutor(job).execute(parts, true);
  assert.deepEqual(outcome, { kind: "failed", message: "gpu-node 127.0.0.1:1: logits of the wrong shape" });
});

test("a gpu-node holding no model, or another one, is told by NodeError.reason alone, never by code or text", () => {
  const gpu = { role: "gpu", code: Code.FAILED_PRECONDITION };
  assert.equal(needsReload({ ...gpu, reason: NodeErrorReason.MODEL_MISMATCH }), true);
  assert.equal(needsReload({ ...gpu, reason: NodeErrorReason.LEASED }), false);
  assert.equal(needsReload({ ...gpu, reason: NodeErrorReason.MODEL_NOT_LOADED }), true);
  assert.equal(needsReload({ role: "gpu", code: Code.INTERNAL, reason: NodeErrorReason.MODEL_NOT_LOADED }), true);
  assert.equal(needsReload({ ...gpu, reason: NodeErrorReason.UNSPECIFIED }), false);
  assert.equal(needsReload({ ...gpu, reason: NodeErrorReason.INVALID_REQUEST }), false);
  assert.equal(
    needsReload({ role: "memory", code: Code.FAILED_PRECONDITION, reason: NodeErrorReason.UNSPECIFIED }),
    false,
  );
});
