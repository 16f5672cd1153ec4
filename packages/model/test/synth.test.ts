import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ModelShape } from "@tessera/core";
import {
  LAYER_WEIGHT_NAMES,
  ReferenceModel,
  decodeTensor,
  encodeTensor,
  llamaHiddenDim,
  loadCheckpoint,
  loadHfModel,
  openModel,
  readAllWeights,
  readSafetensors,
  synthReader,
  synthesizeWeights,
  writeCheckpoint,
  writeHfModel,
  type CheckpointFormat,
  type LlamaWeights,
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

test("synthReader draws each tensor independently of read order; biases and a separate classifier leave the rest unchanged", () => {
  const plain = synthesizeWeights(shape, 11);
  const withExtras = synthesizeWeights(shape, 11, { qkvBias: true, separateClassifier: true });
  const reader = synthReader(shape, 11, { qkvBias: true, separateClassifier: true });
  // Backwards, one tensor at a time: same bytes as the in-memory model.
  for (let l = shape.nLayers - 1; l >= 0; l--) {
    for (const name of [...LAYER_WEIGHT_NAMES].reverse()) {
      assert.deepEqual(reader.read(name, l), withExtras.layers[l]![name], `${name}[${l}]`);
      if (!name.startsWith("b")) assert.deepEqual(withExtras.layers[l]![name], plain.layers[l]![name]);
    }
  }
  assert.deepEqual(withExtras.tokenEmbedding, plain.tokenEmbedding);
  assert.equal(plain.classifier, plain.tokenEmbedding);
  assert.notDeepEqual(withExtras.classifier, withExtras.tokenEmbedding);
  assert.equal(plain.layers[0]!.bq, undefined);
  // Biases have RMS ≈ 0.5 and differ between q, k, v and layers.
  const bq = withExtras.layers[0]!.bq!;
  const rms = Math.sqrt(bq.reduce((a, v) => a + v * v, 0) / bq.length);
  assert.ok(rms > 0.35 && rms < 0.65, `bias RMS ${rms}`);
  assert.notDeepEqual(withExtras.layers[0]!.bk, withExtras.layers[1]!.bk);
  assert.throws(() => synthReader(shape, 11).read("bq", 0), /no bq/);
  assert.throws(() => reader.read("wq", shape.nLayers), RangeError);
});

for (const dtype of ["f32", "f16", "bf16"] as const) {
  test(`a streamed synthetic Hugging Face folder (${dtype}) loads as the synthetic weights rounded to ${dtype}`, async () => {
    const out = join(dir, `hf-${dtype}`);
    const progress: number[] = [];
    const reader = synthReader(shape, 5, { separateClassifier: true });
    await writeHfModel(out, shape, reader, {
      dtype,
      sharedClassifier: false,
      onProgress: (done, total) => progress.push(done / total),
    });
    assert.equal(progress.at(-1), 1);
    assert.ok(progress.every((p, i) => i === 0 || p > progress[i - 1]!));
    const safe = dtype === "f32" ? "F32" : dtype === "f16" ? "F16" : "BF16";
    const round = (a: Float32Array) => decodeTensor(encodeTensor(a, safe), safe);
    const want = synthesizeWeights(shape, 5, { separateClassifier: true });
    const loaded = await loadHfModel(out);
    assert.equal(loaded.sharedClassifier, false);
    assert.equal(loaded.dtype, safe);
    assert.deepEqual(loaded.weights.tokenEmbedding, round(want.tokenEmbedding));
    assert.deepEqual(loaded.weights.classifier, round(want.classifier));
    for (let l = 0; l < shape.nLayers; l++) {
      for (const name of ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "rmsAtt"] as const) {
        assert.deepEqual(loaded.weights.layers[l]![name], round(want.layers[l]![name]), `${name}[${l}]`);
      }
    }
    // The file holds q in HF's half-split rotary layout, not llama2.c's.
    const { tensors } = await readSafetensors(join(out, "model.safetensors"));
    assert.notDeepEqual(tensors.get("model.layers.0.self_attn.q_proj.weight")!.data, round(want.layers[0]!.wq));
    assert.deepEqual(tensors.get("model.layers.0.self_attn.v_proj.weight")!.data, round(want.layers[0]!.wv));
  });
}

test("openModel reads tensor by tensor the same weights loadCheckpoint reads, in both formats", async () => {
  const bin = join(dir, "open.bin");
  const hf = join(dir, "open-hf");
  const reader = synthReader(shape, 9);
  await writeCheckpoint(bin, shape, reader, { sharedClassifier: true });
  await writeHfModel(hf, shape, reader, { dtype: "f32" });
  const want = synthesizeWeights(shape, 9);
  for (const path of [bin, hf]) {
    const source = await openModel(path);
    assert.deepEqual(await source.read("w2", 1), want.layers[1]!.w2);
    assert.deepEqual(await source.read("classifier"), want.tokenEmbedding);
    assert.deepEqual(weightBytes(await readAllWeights(source)), weightBytes(want));
    await assert.rejects(
      Promise.resolve().then(() => source.read("bq", 0)),
      RangeError,
    );
  }
  assert.deepEqual(weightBytes((await loadCheckpoint(bin)).weights), weightBytes(want));
});
