/**
 * SequenceStep.n_logit_rows against a real memory-node: the last stage
 * returns, per sequence in request order, the logits of its last
 * max(1, n_logit_rows) new positions in position order, each equal to the
 * plain-TypeScript ReferenceModel's logits at that position (to 1e-4 with
 * f32 on the wire), with micro-batches and across two pipeline stages too;
 * 0 and 1 give exactly the bytes of one row per sequence. And the reason
 * (NodeErrorReason) of the step errors a gpu-node answers.
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { tensorF32 } from "@tessera/core";
import { ReferenceModel, loadCheckpoint, type Checkpoint } from "@tessera/model";
import {
  Attention,
  Code,
  GpuNode,
  NodeErrorReason,
  createClient,
  type Client,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { createMemoryNode, type MemoryNode } from "@tessera/memory-node";
import { freePort } from "@tessera/testing";
import { createGpuNode, type GpuNodeOptions } from "../src/index.js";

const MODEL = fileURLToPath(new URL("../../../../shared/models/stories260K.bin", import.meta.url));
const TOL = 1e-4;

let ckpt: Checkpoint;
let reference: ReferenceModel;
let memory: MemoryNode;
let attention: Client<typeof Attention>;
const closers: (() => Promise<void> | void)[] = [];

before(async () => {
  ckpt = await loadCheckpoint(MODEL);
  reference = new ReferenceModel(ckpt);
  memory = createMemoryNode({ port: 0 });
  await memory.start();
  attention = createClient(Attention, memory.address);
});

after(async () => {
  for (const c of closers.reverse()) await c();
  attention.close();
  await memory.close();
});

let nextSeq = 0;

/** Opens a fresh sequence on the memory-node; returns its id. */
async function openSequence(): Promise<string> {
  const { nLayers, nHeads, nKvHeads, headDim } = ckpt.shape;
  const seqId = `s${nextSeq++}`;
  await attention.openSequence({ seqId, layout: { nLayers, nHeads, nKvHeads, headDim }, maxPositions: 64 });
  return seqId;
}

async function startGpu(options: GpuNodeOptions = {}) {
  // f32 on the wire: the logits are held to 1e-4.
  const node = createGpuNode({ intraOpThreads: 1, wireDtype: "f32", ...options });
  await node.start();
  const client = createClient(GpuNode, node.address);
  closers.push(async () => {
    client.close();
    await node.close();
  });
  return { node, client };
}

/** A Forward stream read one response at a time. */
function openForward(client: Client<typeof GpuNode>) {
  const call = client.forward();
  const waiting: ((r: ForwardResponse) => void)[] = [];
  call.on("data", (r: ForwardResponse) => waiting.shift()!(r));
  call.on("error", () => undefined);
  closers.push(() => {
    call.end();
    call.cancel();
  });
  return (req: MessageInitShape<typeof ForwardRequestSchema>) =>
    new Promise<ForwardResponse>((resolve) => {
      waiting.push(resolve);
      call.write(req);
    });
}

/** The reference model's logits after each of `tokens` (position by position). */
function referenceLogits(tokens: number[]): Float32Array[] {
  const state = reference.createState(64);
  return tokens.map((t, pos) => reference.forward(state, t, pos).slice());
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length, "length");
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

function assertClose(actual: Float32Array, expected: Float32Array, what: string): void {
  const d = maxDiff(actual, expected);
  assert.ok(d <= TOL, `${what}: max |diff| ${d}`);
}

/** Row `i` of a [rows, vocab] logits response. */
function row(res: ForwardResponse, i: number): Float32Array {
  const v = ckpt.shape.vocabSize;
  return tensorF32(res.logits).subarray(i * v, (i + 1) * v);
}

const PROMPT_A = [1, 403, 407, 261, 378, 300, 301];
const PROMPT_B = [1, 56, 71, 99];

test("n_logit_rows = n_tokens on a prefill gives every position's logits, as the reference model; 1 and 0 give the last row only", async () => {
  const { client } = await startGpu();
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const step = openForward(client);
  const ref = referenceLogits(PROMPT_A);
  const n = PROMPT_A.length;

  const all = await step({
    stepId: 1n,
    sequences: [
      { seqId: await openSequence(), startPos: 0, nTokens: n, attentionAddress: memory.address, nLogitRows: n },
    ],
    tokens: PROMPT_A,
  });
  assert.equal(all.error, undefined);
  assert.deepEqual(all.logits!.shape, [n, ckpt.shape.vocabSize]);
  for (let j = 0; j < n; j++) assertClose(row(all, j), ref[j]!, `row ${j}`);

  const last = (nLogitRows: number) =>
    openSequence().then((seqId) =>
      step({
        stepId: 2n + BigInt(nLogitRows),
        sequences: [{ seqId, startPos: 0, nTokens: n, attentionAddress: memory.address, nLogitRows }],
        tokens: PROMPT_A,
      }),
    );
  const one = await last(1);
  const zero = await last(0);
  assert.equal(one.error, undefined);
  assert.deepEqual(one.logits!.shape, [1, ckpt.shape.vocabSize]);
  assertClose(row(one, 0), ref[n - 1]!, "n_logit_rows 1");
  // 0 is the default (one row): the same bytes as 1, and as the last row of all of them.
  assert.deepEqual(zero.logits, one.logits);
  assert.deepEqual(row(all, n - 1), row(one, 0));
});

test("several sequences with different n_logit_rows come back in request order, in position order, with micro-batches", async () => {
  const refA = referenceLogits(PROMPT_A);
  const refB = referenceLogits(PROMPT_B);
  for (const microBatches of [1, 2]) {
    const { client } = await startGpu({ microBatches });
    await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
    const step = openForward(client);
    const [b, c, a] = [await openSequence(), await openSequence(), await openSequence()];
    // b: the last 3 of its 4 rows; c: the default (its last row); a: the last 3 of 7.
    const res = await step({
      stepId: 1n,
      sequences: [
        { seqId: b, startPos: 0, nTokens: PROMPT_B.length, attentionAddress: memory.address, nLogitRows: 3 },
        { seqId: c, startPos: 0, nTokens: PROMPT_A.length, attentionAddress: memory.address },
        { seqId: a, startPos: 0, nTokens: PROMPT_A.length, attentionAddress: memory.address, nLogitRows: 3 },
      ],
      tokens: [...PROMPT_B, ...PROMPT_A, ...PROMPT_A],
    });
    assert.equal(res.error, undefined, res.error?.message);
    // [reference logits of the sequence, position] of each row, in the order they must come back.
    const want: [Float32Array[], number][] = [
      [refB, 1],
      [refB, 2],
      [refB, 3],
      [refA, 6],
      [refA, 4],
      [refA, 5],
      [refA, 6],
    ];
    assert.deepEqual(res.logits!.shape, [want.length, ckpt.shape.vocabSize]);
    want.forEach(([ref, pos], i) => assertClose(row(res, i), ref[pos]!, `microBatches ${microBatches}: row ${i}`));
    // The rows differ from one another: a wrong order could not match.
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        if (i !== j) assert.ok(maxDiff(row(res, i), row(res, j)) > 100 * TOL, `rows ${i} and ${j} differ`);
      }
    }
    assert.ok(maxDiff(row(res, 3), row(res, 4)) > 100 * TOL);
  }
});

test("a decode step of 2 tokens with n_logit_rows 2 (a draft verified) continues the prefill's KV cache", async () => {
  const { client } = await startGpu();
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const step = openForward(client);
  const seqId = await openSequence();
  const prompt = PROMPT_A.slice(0, 5);
  const draft = PROMPT_A.slice(5, 7);
  const ref = referenceLogits(PROMPT_A);
  const prefill = await step({
    stepId: 1n,
    sequences: [{ seqId, startPos: 0, nTokens: prompt.length, attentionAddress: memory.address }],
    tokens: prompt,
  });
  assert.equal(prefill.error, undefined);
  assertClose(row(prefill, 0), ref[4]!, "prefill");
  const verify = await step({
    stepId: 2n,
    sequences: [{ seqId, startPos: 5, nTokens: 2, attentionAddress: memory.address, nLogitRows: 2 }],
    tokens: draft,
  });
  assert.equal(verify.error, undefined);
  assert.deepEqual(verify.logits!.shape, [2, ckpt.shape.vocabSize]);
  assertClose(row(verify, 0), ref[5]!, "row of position 5");
  assertClose(row(verify, 1), ref[6]!, "row of position 6");
});

test("across two pipeline stages only the last applies the head: every row as the reference model", async () => {
  const first = await startGpu();
  const second = await startGpu();
  await first.client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 3, embed: true, head: false });
  await second.client.load({ modelPath: MODEL, layerStart: 3, layerEnd: 5, embed: false, head: true });
  const step = openForward(first.client);
  const ref = referenceLogits(PROMPT_A);
  const refB = referenceLogits(PROMPT_B);
  const [a, b] = [await openSequence(), await openSequence()];
  const res = await step({
    stepId: 1n,
    sequences: [
      { seqId: a, startPos: 0, nTokens: PROMPT_A.length, attentionAddress: memory.address, nLogitRows: 7 },
      { seqId: b, startPos: 0, nTokens: PROMPT_B.length, attentionAddress: memory.address, nLogitRows: 2 },
    ],
    tokens: [...PROMPT_A, ...PROMPT_B],
    nextStages: [second.node.address],
  });
  assert.equal(res.error, undefined, res.error?.message);
  assert.deepEqual(res.logits!.shape, [9, ckpt.shape.vocabSize]);
  for (let j = 0; j < 7; j++) assertClose(row(res, j), ref[j]!, `a: row ${j}`);
  assertClose(row(res, 7), refB[2]!, "b: row of position 2");
  assertClose(row(res, 8), refB[3]!, "b: row of position 3");
  assert.equal(res.stageTimings.length, 2);
});

test("n_logit_rows above n_tokens is INVALID_ARGUMENT with reason INVALID_REQUEST; the stream goes on", async () => {
  const { node, client } = await startGpu();
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const step = openForward(client);
  const seqId = await openSequence();
  const bad = await step({
    stepId: 1n,
    sequences: [{ seqId, startPos: 0, nTokens: 2, attentionAddress: memory.address, nLogitRows: 3 }],
    tokens: [1, 403],
  });
  assert.equal(bad.error?.code, Code.INVALID_ARGUMENT);
  assert.equal(bad.error?.reason, NodeErrorReason.INVALID_REQUEST);
  assert.equal(bad.error?.role, "gpu");
  assert.equal(bad.error?.address, node.address);
  assert.match(bad.error!.message, /n_logit_rows 3 exceeds its n_tokens 2/);
  const ok = await step({
    stepId: 2n,
    sequences: [{ seqId, startPos: 0, nTokens: 2, attentionAddress: memory.address, nLogitRows: 2 }],
    tokens: [1, 403],
  });
  assert.equal(ok.error, undefined);
});

test("step errors carry their reason: MODEL_NOT_LOADED, INVALID_REQUEST, UNREACHABLE (attention node, later stage)", async () => {
  const { node, client } = await startGpu({ attentionTimeoutMs: 5_000, downstreamTimeoutMs: 5_000 });
  const step = openForward(client);
  const seqId = await openSequence();
  const one = (attentionAddress: string) => [{ seqId, startPos: 0, nTokens: 1, attentionAddress }];

  const notLoaded = await step({ stepId: 1n, sequences: one(memory.address), tokens: [1] });
  assert.equal(notLoaded.error?.code, Code.FAILED_PRECONDITION);
  assert.equal(notLoaded.error?.reason, NodeErrorReason.MODEL_NOT_LOADED);
  assert.equal(notLoaded.error?.message, "no model is loaded: call Load first");
  assert.equal(notLoaded.error?.address, node.address);

  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 3, embed: true, head: false });
  const badShape = await step({ stepId: 2n, sequences: one(memory.address), tokens: [1, 2] });
  assert.equal(badShape.error?.code, Code.INVALID_ARGUMENT);
  assert.equal(badShape.error?.reason, NodeErrorReason.INVALID_REQUEST);
  const badStage = await step({ stepId: 3n, sequences: one(memory.address), tokens: [1], nextStages: [""] });
  assert.equal(badStage.error?.reason, NodeErrorReason.INVALID_REQUEST);

  const nobody = `127.0.0.1:${await freePort()}`;
  const noAttention = await step({ stepId: 4n, sequences: one(nobody), tokens: [1] });
  assert.equal(noAttention.error?.code, Code.UNAVAILABLE);
  assert.equal(noAttention.error?.reason, NodeErrorReason.UNREACHABLE);
  assert.deepEqual([noAttention.error?.role, noAttention.error?.address], ["attention", nobody]);

  const noStage = await step({ stepId: 5n, sequences: one(memory.address), tokens: [1], nextStages: [nobody] });
  assert.equal(noStage.error?.code, Code.UNAVAILABLE);
  assert.equal(noStage.error?.reason, NodeErrorReason.UNREACHABLE);
  assert.deepEqual([noStage.error?.role, noStage.error?.address], ["gpu", nobody]);
});
