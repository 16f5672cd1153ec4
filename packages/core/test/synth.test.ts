import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ReferenceModel,
  llamaHiddenDim,
  loadCheckpoint,
  synthesizeWeights,
  writeCheckpoint,
  type CheckpointFormat,
  type LlamaWeights,
  type ModelShape,
} from "../src/index.js";

const dir = await mkdtemp(join(tmpdir(), "tessera-synth-"));
after(() => rm(dir, { recursive: true, force: true }));

const shape: ModelShape = {
  dim: 32,
  hiddenDim: llamaHiddenDim(32, 16),
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  vocabSize: 40,
  seqLen: 16,
  headDim: 8,
  ropeTheta: 10000,
  normEps: 1e-5,
};

/** Every weight array in a fixed order, as bytes. */
function weightBytes(w: LlamaWeights): Buffer[] {
  const arrays = [w.tokenEmbedding, w.rmsFinal, w.classifier];
  for (const l of w.layers) arrays.push(l.rmsAtt, l.wq, l.wk, l.wv, l.wo, l.rmsFfn, l.w1, l.w2, l.w3);
  return arrays.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength));
}

test("llamaHiddenDim is Llama's 2/3 * 4 * dim rounded up", () => {
  assert.equal(llamaHiddenDim(1024), 2816);
  assert.equal(llamaHiddenDim(4096), 11008); // Llama 2 7B
  assert.equal(llamaHiddenDim(288, 32), 768); // llama2.c stories15M
  assert.equal(llamaHiddenDim(32, 16), 96); // floor(256 / 3) = 85 -> 96
  assert.throws(() => llamaHiddenDim(0), RangeError);
});

test("synthesizeWeights is deterministic per seed, shaped, bounded and shares the classifier", () => {
  const a = synthesizeWeights(shape, 7);
  const b = synthesizeWeights(shape, 7);
  const c = synthesizeWeights(shape, 8);
  assert.deepEqual(weightBytes(a), weightBytes(b));
  assert.notDeepEqual(
    weightBytes(a).map((x) => x.toString("hex")),
    weightBytes(c).map((x) => x.toString("hex")),
  );
  assert.equal(a.classifier, a.tokenEmbedding);
  assert.equal(a.tokenEmbedding.length, 40 * 32);
  const l = a.layers[1]!;
  assert.deepEqual(
    [l.wq.length, l.wk.length, l.wv.length, l.wo.length, l.w1.length, l.w2.length, l.w3.length],
    [32 * 32, 16 * 32, 16 * 32, 32 * 32, 96 * 32, 32 * 96, 96 * 32],
  );
  assert.ok(l.rmsAtt.every((v) => v === 1) && a.rmsFinal.every((v) => v === 1));
  // w2 has in_features = hidden_dim = 96: |w| < sqrt(3 / 96) = 0.1768.
  const bound = Math.sqrt(3 / 96);
  assert.ok(l.w2.every((v) => Math.abs(v) <= bound));
  // The stream is splitmix32: check the first values against a BigInt transcription of it.
  let st = 7n;
  const first = Array.from({ length: 4 }, () => {
    st = (st + 0x9e3779b9n) & 0xffffffffn;
    let z = ((st ^ (st >> 16n)) * 0x85ebca6bn) & 0xffffffffn;
    z = ((z ^ (z >> 13n)) * 0xc2b2ae35n) & 0xffffffffn;
    z ^= z >> 16n;
    const half = Math.sqrt(3 / 32);
    return Math.fround((Number(z) / 2 ** 32) * 2 * half - half);
  });
  assert.deepEqual([...a.tokenEmbedding.subarray(0, 4)], first);
  assert.equal(Buffer.from(a.tokenEmbedding.buffer, 0, 16).toString("hex"), "009663be0666f5bc0b2c9c3ec83e033d");
  assert.throws(() => synthesizeWeights(shape, -1), RangeError);
  assert.throws(() => synthesizeWeights(shape, 2 ** 32), RangeError);
});

test("activations stay O(1) through 8 layers (logit RMS within [0.5, 2])", () => {
  const deep: ModelShape = {
    ...shape,
    dim: 128,
    hiddenDim: llamaHiddenDim(128),
    nLayers: 8,
    nHeads: 8,
    nKvHeads: 4,
    headDim: 16,
    vocabSize: 256,
  };
  const model = new ReferenceModel({ shape: deep, weights: synthesizeWeights(deep, 1) });
  const state = model.createState(8);
  for (let pos = 0; pos < 8; pos++) {
    const logits = model.forward(state, (pos * 37) % 256, pos);
    const rms = Math.sqrt(logits.reduce((s, v) => s + v * v, 0) / logits.length);
    assert.ok(rms > 0.5 && rms < 2, `pos ${pos}: logit RMS ${rms}`);
  }
});

for (const format of ["llama2c-legacy", "llama2c-v1"] as CheckpointFormat[]) {
  for (const shared of [true, false]) {
    test(`a synthetic checkpoint round-trips (${format}, ${shared ? "shared" : "separate"} classifier)`, async () => {
      const weights = synthesizeWeights(shape, 3);
      if (!shared) weights.classifier = synthesizeWeights(shape, 4).tokenEmbedding;
      const path = join(dir, `${format}-${shared}.bin`);
      await writeCheckpoint(path, shape, weights, { format, sharedClassifier: shared });
      const loaded = await loadCheckpoint(path);
      assert.equal(loaded.format, format);
      assert.equal(loaded.sharedClassifier, shared);
      assert.deepEqual(loaded.shape, shape);
      assert.deepEqual(weightBytes(loaded.weights), weightBytes(weights));
      assert.equal(loaded.weights.classifier === loaded.weights.tokenEmbedding, shared);

      // The reference model gives the same finite logits from the file as from memory.
      const fromFile = new ReferenceModel(loaded);
      const fromMemory = new ReferenceModel({ shape, weights });
      const s1 = fromFile.createState();
      const s2 = fromMemory.createState();
      for (let pos = 0; pos < 4; pos++) {
        const a = fromFile.forward(s1, pos + 5, pos);
        const b = fromMemory.forward(s2, pos + 5, pos);
        assert.ok(a.every(Number.isFinite));
        assert.deepEqual(a, b);
      }
    });
  }
}
