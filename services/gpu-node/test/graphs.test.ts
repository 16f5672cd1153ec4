/**
 * Numerics of the ONNX graphs of stories260K (pre-attention, post-attention,
 * head) against plain-TypeScript loops written here from llama2.c run.c.
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { MODEL_LIMITS, loadCheckpoint, type Checkpoint, type LayerWeights } from "@tessera/model";
import { DenseModel } from "../src/index.js";
import { buildPreAttentionGraph } from "../src/llama-graphs.js";

const MODEL = fileURLToPath(new URL("../../../../shared/models/stories260K.bin", import.meta.url));
const TOL = 1e-5;

let ckpt: Checkpoint;
let model: DenseModel;

before(async () => {
  ckpt = await loadCheckpoint(MODEL);
  model = await DenseModel.create(ckpt, { intraOpThreads: 1 });
});

after(async () => {
  await model?.release();
});

/** Deterministic values in [-1, 1) (mulberry32). */
function randoms(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

/** llama2.c rmsnorm of one row. */
function rmsnorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return Float32Array.from(x, (v, j) => w[j]! * (inv * v));
}

/** out = W x with W [d, n] row-major (llama2.c matmul). */
function matvec(w: Float32Array, x: Float32Array, d: number): Float32Array {
  const n = x.length;
  const out = new Float32Array(d);
  for (let i = 0; i < d; i++) {
    let acc = 0;
    for (let j = 0; j < n; j++) acc += w[i * n + j]! * x[j]!;
    out[i] = acc;
  }
  return out;
}

/** llama2.c RoPE: rotate pairs (i, i+1) by pos / 10000^((i % head_dim) / head_dim). */
function rope(vec: Float32Array, pos: number, headDim: number): void {
  for (let i = 0; i < vec.length; i += 2) {
    const freq = 1 / Math.pow(10000, (i % headDim) / headDim);
    const c = Math.cos(pos * freq);
    const s = Math.sin(pos * freq);
    const v0 = vec[i]!;
    const v1 = vec[i + 1]!;
    vec[i] = v0 * c - v1 * s;
    vec[i + 1] = v0 * s + v1 * c;
  }
}

function assertClose(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  assert.ok(worst <= TOL, `${what}: max |diff| ${worst} at ${at} (got ${actual[at]}, want ${expected[at]})`);
}

const row = (a: Float32Array, r: number, n: number) => a.subarray(r * n, (r + 1) * n);

for (const layer of [0, 4]) {
  test(`pre-attention graph of layer ${layer}: RMSNorm, Wq/Wk/Wv and RoPE at positions 0..511`, async () => {
    const { dim, nHeads, nKvHeads, headDim, normEps } = ckpt.shape;
    const positions = [0, 1, 2, 7, 63, 200, 511];
    const T = positions.length;
    const x = randoms(T * dim, 11 + layer);
    const { q, k, v } = await model.pre(layer, x, BigInt64Array.from(positions, BigInt));
    assert.equal(q.length, T * nHeads * headDim);
    const w: LayerWeights = ckpt.weights.layers[layer]!;
    for (let t = 0; t < T; t++) {
      const h = rmsnorm(row(x, t, dim), w.rmsAtt, normEps);
      const qr = matvec(w.wq, h, nHeads * headDim);
      const kr = matvec(w.wk, h, nKvHeads * headDim);
      const vr = matvec(w.wv, h, nKvHeads * headDim);
      rope(qr, positions[t]!, headDim);
      rope(kr, positions[t]!, headDim);
      assertClose(row(q, t, nHeads * headDim), qr, `q row ${t} (pos ${positions[t]})`);
      assertClose(row(k, t, nKvHeads * headDim), kr, `k row ${t} (pos ${positions[t]})`);
      assertClose(row(v, t, nKvHeads * headDim), vr, `v row ${t}`);
    }
  });

  test(`post-attention graph of layer ${layer}: Wo, residual, RMSNorm, SwiGLU FFN, residual`, async () => {
    const { dim, hiddenDim, nHeads, headDim, normEps } = ckpt.shape;
    const T = 5;
    const x = randoms(T * dim, 21 + layer);
    const o = randoms(T * nHeads * headDim, 31 + layer);
    const out = new Float32Array(T * dim);
    const y = await model.post(layer, x, o, out);
    assert.equal(y, out);
    const w = ckpt.weights.layers[layer]!;
    for (let t = 0; t < T; t++) {
      const x1 = matvec(w.wo, row(o, t, nHeads * headDim), dim).map((v, j) => v + x[t * dim + j]!);
      const h = rmsnorm(x1, w.rmsFfn, normEps);
      const g = matvec(w.w1, h, hiddenDim);
      const u = matvec(w.w3, h, hiddenDim);
      const act = g.map((gv, j) => gv * (1 / (1 + Math.exp(-gv))) * u[j]!);
      const ffn = matvec(w.w2, act, dim);
      assertClose(
        row(y, t, dim),
        x1.map((v, j) => v + ffn[j]!),
        `y row ${t}`,
      );
    }
  });
}

test("head graph: final RMSNorm and classifier", async () => {
  const { dim, vocabSize, normEps } = ckpt.shape;
  const N = 3;
  const x = randoms(N * dim, 41);
  const logits = await model.head(x);
  assert.equal(logits.length, N * vocabSize);
  for (let n = 0; n < N; n++) {
    const h = rmsnorm(row(x, n, dim), ckpt.weights.rmsFinal, normEps);
    assertClose(row(logits, n, vocabSize), matvec(ckpt.weights.classifier, h, vocabSize), `logits row ${n}`);
  }
});

test("embed copies embedding rows and rejects tokens outside the vocabulary", () => {
  const { dim } = ckpt.shape;
  const x = model.embed([5, 0, 511]);
  assert.deepEqual(row(x, 0, dim), ckpt.weights.tokenEmbedding.subarray(5 * dim, 6 * dim));
  assert.deepEqual(row(x, 2, dim), ckpt.weights.tokenEmbedding.subarray(511 * dim, 512 * dim));
  assert.throws(() => model.embed([3, 512]), {
    name: "RangeError",
    message: "token 512 at index 1 is outside the vocabulary [0, 512)",
  });
});

test("pre-attention graph reads inputs that are views at an offset of a larger buffer", async () => {
  const { dim, nHeads, headDim } = ckpt.shape;
  const big = randoms(4 * dim, 51);
  const view = big.subarray(2 * dim, 3 * dim);
  const a = await model.pre(1, view, BigInt64Array.of(9n));
  const b = await model.pre(1, view.slice(), BigInt64Array.of(9n));
  assert.deepEqual(a.q, b.q);
  assert.equal(a.q.length, nHeads * headDim);
});

test("no seq_len-sized table: the pre-attention graph's bytes do not grow with seq_len, and a position past it is refused", async () => {
  const w = ckpt.weights.layers[0]!;
  const bytes = (seqLen: number) => buildPreAttentionGraph({ ...ckpt.shape, seqLen }, w, 0).toBytes().byteLength;
  // A header may declare up to MODEL_LIMITS.maxSeqLen positions; nothing is sized by it.
  assert.equal(bytes(MODEL_LIMITS.maxSeqLen), bytes(ckpt.shape.seqLen));
  const { seqLen } = ckpt.shape;
  await assert.rejects(model.pre(0, randoms(ckpt.shape.dim, 3), BigInt64Array.of(BigInt(seqLen))), {
    name: "RangeError",
    message: `position ${seqLen} is outside [0, ${seqLen})`,
  });
});
