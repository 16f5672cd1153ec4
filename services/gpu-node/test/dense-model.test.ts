/**
 * DenseModel loading: from a file opened tensor by tensor (openModel) it
 * computes exactly what it computes from a loaded checkpoint, for a whole
 * model and for pipeline stages.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ModelShape } from "@tessera/core";
import { loadModel, openModel, synthReader, synthesizeWeights, writeHfModel } from "@tessera/model";
import { DenseModel } from "../src/index.js";

const dir = await mkdtemp(join(tmpdir(), "tessera-dense-"));
after(() => rm(dir, { recursive: true, force: true }));

const shape: ModelShape = {
  dim: 64,
  hiddenDim: 160,
  nLayers: 3,
  nHeads: 4,
  nKvHeads: 2,
  vocabSize: 48,
  seqLen: 16,
  headDim: 16,
  ropeTheta: 10000,
  normEps: 1e-5,
};

const hf = join(dir, "hf-f16");
await writeHfModel(hf, shape, synthReader(shape, 2, { separateClassifier: true }), {
  dtype: "f16",
  sharedClassifier: false,
});

/** Runs every layer of `m` over `x` (attention output replaced by q, a stand-in) and its head when it has one. */
async function outputs(m: DenseModel, x: Float32Array): Promise<Float32Array[]> {
  const positions = new BigInt64Array([0n, 1n]);
  const out: Float32Array[] = [];
  for (let l = m.layerStart; l < m.layerEnd; l++) {
    const { q, k, v } = await m.pre(l, x, positions);
    out.push(q, k, v);
    x = await m.post(l, x, q);
    out.push(x);
  }
  if (m.hasHead) out.push(await m.head(x));
  return out;
}

test("DenseModel from openModel (f16 HF folder, read per layer) equals DenseModel from the loaded checkpoint", async () => {
  const x = new Float32Array(2 * shape.dim).map((_, i) => Math.sin(i));
  const loaded = await DenseModel.create(await loadModel(hf), { intraOpThreads: 1 });
  const fromSource = await DenseModel.create(await openModel(hf), { intraOpThreads: 1 });
  try {
    assert.equal(fromSource.weightBytes, loaded.weightBytes);
    assert.deepEqual(fromSource.embed([3, 47]), loaded.embed([3, 47]));
    assert.deepEqual(await outputs(fromSource, x), await outputs(loaded, x));
  } finally {
    await Promise.all([loaded.release(), fromSource.release()]);
  }
});

test("pipeline stages opened from a file hold their layer range only, and chain to the whole model's output", async () => {
  const x = new Float32Array(2 * shape.dim).map((_, i) => Math.cos(i));
  const whole = await DenseModel.create(await openModel(hf), { intraOpThreads: 1 });
  const first = await DenseModel.create(await openModel(hf), { layerEnd: 1, head: false, intraOpThreads: 1 });
  const last = await DenseModel.create(await openModel(hf), { layerStart: 1, embed: false, intraOpThreads: 1 });
  try {
    const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = shape;
    const perLayer = 4 * (2 * dim + 2 * dim * nHeads * headDim + 2 * dim * nKvHeads * headDim + 3 * dim * hiddenDim);
    // The embedding stays f16 as stored; the classifier goes to onnxruntime as f32.
    assert.equal(first.weightBytes, perLayer + 2 * vocabSize * dim);
    assert.equal(first.embeddingDtype, "F16");
    assert.equal(last.weightBytes, 2 * perLayer + 4 * (dim + vocabSize * dim));
    assert.equal(first.embeds && !first.hasHead && !last.embeds && last.hasHead, true);
    const a = await outputs(first, x);
    const b = await outputs(last, a.at(-1)!);
    assert.deepEqual([...a, ...b], await outputs(whole, x));
  } finally {
    await Promise.all([whole.release(), first.release(), last.release()]);
  }
});

test("q/k/v biases (Qwen2 layout) are added to the projections: at position 0 (no rotation) q, k, v move by exactly bq, bk, bv", async () => {
  const withBias = synthesizeWeights(shape, 4, { qkvBias: true });
  const noBias = { ...withBias, layers: withBias.layers.map(({ bq: _q, bk: _k, bv: _v, ...rest }) => rest) };
  const header = {
    path: "synthetic",
    format: "hf" as const,
    shape,
    sharedClassifier: true,
    headerBytes: 0,
    expectedBytes: 0,
  };
  const a = await DenseModel.create({ ...header, weights: withBias }, { layerEnd: 1, head: false, intraOpThreads: 1 });
  const b = await DenseModel.create({ ...header, weights: noBias }, { layerEnd: 1, head: false, intraOpThreads: 1 });
  try {
    const { dim, nHeads, nKvHeads, headDim } = shape;
    assert.equal(a.weightBytes - b.weightBytes, 4 * (nHeads + 2 * nKvHeads) * headDim);
    const x = new Float32Array(dim).map((_, i) => Math.sin(i + 1));
    const pos = new BigInt64Array([0n]);
    const [qa, qb] = [await a.pre(0, x, pos), await b.pre(0, x, pos)];
    for (const [name, bias] of [
      ["q", withBias.layers[0]!.bq!],
      ["k", withBias.layers[0]!.bk!],
      ["v", withBias.layers[0]!.bv!],
    ] as const) {
      const diff = qa[name].map((v, i) => v - qb[name][i]!);
      assert.ok(
        diff.every((d, i) => Math.abs(d - bias[i]!) < 1e-5),
        `${name}: with - without bias != bias`,
      );
      assert.ok(bias.some((v) => Math.abs(v) > 0.1));
    }
  } finally {
    await Promise.all([a.release(), b.release()]);
  }
});

test('weightDtype "f16" holds half the projection/classifier bytes and computes what f32 does on f16-rounded weights, to f16 activation rounding', async () => {
  const source = await openModel(hf); // stored f16: its f32 values are exactly f16-representable
  const f32 = await DenseModel.create(source, { intraOpThreads: 1 });
  const f16 = await DenseModel.create(source, { intraOpThreads: 1, weightDtype: "f16" });
  try {
    assert.equal(f32.weightDtype, "f32"); // the CPU default
    assert.equal(f16.weightDtype, "f16");
    const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize } = shape;
    const matrices = nLayers * (2 * dim * nHeads * headDim + 2 * dim * nKvHeads * headDim + 3 * dim * hiddenDim);
    // Projections and classifier halve; the embedding is f16 in both (as the file stores it).
    assert.equal(f32.weightBytes - f16.weightBytes, 2 * (matrices + vocabSize * dim));
    // The embedding rows are the same values (the file's are f16 already).
    assert.deepEqual(f16.embed([0, 7, 47]), f32.embed([0, 7, 47]));
    const x = new Float32Array(2 * shape.dim).map((_, i) => Math.sin(i / 3));
    const a = await outputs(f16, x);
    const b = await outputs(f32, x);
    assert.equal(a.length, b.length);
    let worst = 0;
    a.forEach((row, r) => {
      const scale = Math.max(...Array.from(b[r]!, Math.abs));
      row.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - b[r]![i]!) / scale)));
    });
    // At most the activations' f16 rounding (2^-11 relative) before each MatMul. On the CPU provider
    // onnxruntime turns the f16 MatMul back into an f32 one on the widened weights and drops the
    // Cast pair around it, so the values come out equal; a CUDA provider would round.
    assert.ok(worst < 1e-2, `f16 vs f32 relative difference ${worst}`);
  } finally {
    await Promise.all([f32.release(), f16.release()]);
  }
});
