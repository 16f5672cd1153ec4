/**
 * The pure step plan (step-plan.ts): rows and logits rows of each sequence,
 * micro-batches split at sequence boundaries with their first logits row,
 * and validation errors as StepError INVALID_ARGUMENT / INVALID_REQUEST.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Code, ForwardRequestSchema, NodeErrorReason, create, type MessageInitShape } from "@tessera/proto";
import { StepError, planStep, splitMicroBatches, type StepModel } from "../src/index.js";

const model: StepModel = {
  shape: { seqLen: 64, dim: 8, nKvHeads: 2, vocabSize: 32 },
  layerStart: 0,
  layerEnd: 2,
  embeds: true,
  hasHead: true,
};

const request = (req: MessageInitShape<typeof ForwardRequestSchema>) => create(ForwardRequestSchema, req);

test("planStep counts max(1, n_logit_rows) rows per sequence; micro-batches know their first logits row", () => {
  const req = request({
    stepId: 7n,
    sequences: [
      { seqId: "a", startPos: 0, nTokens: 4, attentionAddress: "m:1", nLogitRows: 4 },
      { seqId: "b", startPos: 3, nTokens: 1, attentionAddress: "m:2" },
      { seqId: "c", startPos: 0, nTokens: 5, attentionAddress: "m:1", nLogitRows: 2 },
    ],
    tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
  });
  const plan = planStep(req, model, "g:1");
  assert.equal(plan.totalTokens, 10);
  assert.equal(plan.logitRows, 7);
  assert.deepEqual(
    plan.sequences.map((s) => [s.seqId, s.row0, s.logitRows]),
    [
      ["a", 0, 4],
      ["b", 4, 1],
      ["c", 5, 2],
    ],
  );
  const batches = splitMicroBatches(plan.sequences, 2);
  assert.deepEqual(
    batches.map((mb) => [mb.seq0, mb.row0, mb.rows, mb.logitRow0, mb.logitRows]),
    [
      [0, 0, 5, 0, 5],
      [2, 5, 5, 5, 2],
    ],
  );
  const [one] = splitMicroBatches(plan.sequences, 1);
  assert.deepEqual([one!.logitRow0, one!.logitRows, one!.nodes.length], [0, 7, 2]);
});

test("planStep refuses n_logit_rows above n_tokens (and other bad fields) as INVALID_REQUEST naming this node", () => {
  const bad = (req: MessageInitShape<typeof ForwardRequestSchema>) => {
    try {
      planStep(request(req), model, "g:1");
    } catch (err) {
      assert.ok(err instanceof StepError);
      return [err.code, err.reason, err.role, err.address, err.message];
    }
    assert.fail("no error");
  };
  assert.deepEqual(
    bad({
      stepId: 3n,
      sequences: [{ seqId: "a", startPos: 0, nTokens: 2, attentionAddress: "m:1", nLogitRows: 3 }],
      tokens: [1, 2],
    }),
    [
      Code.INVALID_ARGUMENT,
      NodeErrorReason.INVALID_REQUEST,
      "gpu",
      "g:1",
      'step 3: sequence "a": n_logit_rows 3 exceeds its n_tokens 2',
    ],
  );
  assert.deepEqual(
    bad({ stepId: 4n, sequences: [{ seqId: "a", startPos: 0, nTokens: 2, attentionAddress: "m:1" }], tokens: [1] }),
    [Code.INVALID_ARGUMENT, NodeErrorReason.INVALID_REQUEST, "gpu", "g:1", "step 4: 1 tokens for 2 new positions"],
  );
});
