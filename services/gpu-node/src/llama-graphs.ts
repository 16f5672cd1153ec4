/**
 * The dense graphs of a Llama-architecture layer as ONNX models, built from
 * llama2.c weights. Numerics follow llama2.c's run.c `forward()`:
 * RMSNorm `w * (x / sqrt(mean(x²) + eps))`, RoPE on adjacent pairs
 * (2i, 2i+1) of each head, SwiGLU FFN `W2 (silu(W1 h) ⊙ W3 h)`.
 *
 * Every graph takes a symbolic batch dimension "T" (rows: new positions of
 * all sequences of a step, one after another), so one `run` serves a whole
 * batch, prefill and decode alike. Weights are stored [out, in] in the
 * checkpoint and become [in, out] initializers here, so each projection is a
 * plain `MatMul(x [T, in], W [in, out])`; projections that read the same input
 * (Wq|Wk|Wv, W1|W3) are fused into one MatMul and split after.
 */
import type { ModelShape } from "@tessera/core";
import { encodeTensor, type LayerWeights } from "@tessera/model";
import { OnnxGraphBuilder, onnxDataType } from "./onnx-builder.js";

/**
 * Element type of the projection (MatMul) weights in the graphs. "f16"
 * stores them as f16 initializers and casts the activations to f16 around
 * each MatMul (f32 in, f32 out), for execution providers with f16 MatMul
 * kernels (CUDA). Norm weights, biases, RoPE tables and every graph input
 * and output stay f32.
 */
export type WeightDtype = "f32" | "f16";

/** The weights of a layer the pre-attention graph uses (biases only in the Qwen2 layout). */
export type PreAttentionWeights = Pick<LayerWeights, "rmsAtt" | "wq" | "wk" | "wv" | "bq" | "bk" | "bv">;
/** The weights of a layer the post-attention graph uses. */
export type PostAttentionWeights = Pick<LayerWeights, "wo" | "rmsFfn" | "w1" | "w2" | "w3">;

/** Name of the symbolic batch dimension of every graph. */
export const BATCH_DIM = "T";

/** Input/output names of the pre-attention graph. */
export const PRE = { x: "x", cos: "rope_cos", sin: "rope_sin", q: "q", k: "k", v: "v" } as const;
/** Input/output names of the post-attention graph. */
export const POST = { x: "x", o: "o", y: "y" } as const;
/** Input/output names of the head graph. */
export const HEAD = { x: "x", logits: "logits" } as const;

/**
 * Transposes a row-major [rows, cols] matrix into a new [cols, rows] one.
 * Blocked, so that large matrices stay cache-friendly.
 */
export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  if (w.length !== rows * cols)
    throw new RangeError(`transpose: [${rows}, ${cols}] needs ${rows * cols} values, got ${w.length}`);
  const out = new Float32Array(rows * cols);
  const B = 16;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let c = c0; c < c1; c++) {
        // Write a run of out's row c; read down a column of w within the block.
        let o = c * rows + r0;
        let i = r0 * cols + c;
        for (let r = r0; r < r1; r++, i += cols) out[o++] = w[i]!;
      }
    }
  }
  return out;
}

/**
 * Transposes several [rows_i, cols] matrices (same `cols`) and places them
 * side by side: the [cols, Σ rows_i] weight of a fused projection.
 */
export function transposeConcat(ws: readonly { w: Float32Array; rows: number }[], cols: number): Float32Array {
  const total = ws.reduce((a, m) => a + m.rows, 0);
  const out = new Float32Array(cols * total);
  let off = 0;
  for (const { w, rows } of ws) {
    const t = transpose(w, rows, cols);
    for (let c = 0; c < cols; c++) out.set(t.subarray(c * rows, (c + 1) * rows), c * total + off);
    off += rows;
  }
  return out;
}

/**
 * The RoPE rows of some positions as llama2.c run.c computes them: for
 * position p and pair i of a head, angle p · θ^(−2i/head_dim). Returns cos
 * and sin, each [positions.length, head_dim / 2] f32 (computed in f64,
 * rounded once). Only the rows asked for are made: no table of seq_len
 * rows is held, so a header's seq_len sizes nothing.
 * @throws RangeError for a position outside [0, seq_len).
 */
export function ropeRows(
  shape: Pick<ModelShape, "seqLen" | "headDim" | "ropeTheta">,
  positions: ArrayLike<bigint>,
): { cos: Float32Array; sin: Float32Array } {
  const half = shape.headDim / 2;
  const T = positions.length;
  const cos = new Float32Array(T * half);
  const sin = new Float32Array(T * half);
  const freqs = Array.from({ length: half }, (_, i) => 1 / Math.pow(shape.ropeTheta, (2 * i) / shape.headDim));
  for (let t = 0; t < T; t++) {
    const p = Number(positions[t]!);
    if (!(p >= 0 && p < shape.seqLen)) throw new RangeError(`position ${p} is outside [0, ${shape.seqLen})`);
    for (let i = 0; i < half; i++) {
      cos[t * half + i] = Math.cos(p * freqs[i]!);
      sin[t * half + i] = Math.sin(p * freqs[i]!);
    }
  }
  return { cos, sin };
}

/**
 * `x [T, in] · W [in, out]` with `w` (f32, already [in, out]) stored as
 * `dtype`: an f32 MatMul, or Cast(x → f16), MatMul with an f16 initializer
 * (rounded to nearest even), Cast(→ f32). Returns the f32 output's name
 * (`output` when given).
 */
export function projection(
  g: OnnxGraphBuilder,
  x: string,
  name: string,
  w: Float32Array,
  dims: readonly [number, number],
  dtype: WeightDtype,
  output?: string,
): string {
  if (dtype === "f32") return g.op("MatMul", [x, g.f32(name, w, dims)], {}, output);
  const bits = new Uint16Array(encodeTensor(w, "F16").buffer);
  const xh = g.op("Cast", [x], { to: onnxDataType("float16") });
  const yh = g.op("MatMul", [xh, g.f16(name, bits, dims)]);
  return g.op("Cast", [yh], { to: onnxDataType("float32") }, output);
}

/**
 * RMSNorm over the last axis (Zhang & Sennrich 2019, as llama2.c `rmsnorm`):
 * `w * (x / sqrt(mean(x²) + eps))`. Written as Pow → ReduceMean → Add → Sqrt
 * → Div → Mul, the pattern onnxruntime fuses into its
 * SimplifiedLayerNormalization kernel.
 */
export function rmsNorm(g: OnnxGraphBuilder, x: string, weight: Float32Array, eps: number, prefix: string): string {
  const w = g.f32(`${prefix}.weight`, weight, [weight.length]);
  const two = g.f32(g.fresh(`${prefix}.two`), new Float32Array([2]), []);
  const epsC = g.f32(g.fresh(`${prefix}.eps`), new Float32Array([eps]), []);
  const sq = g.op("Pow", [x, two]);
  const ms = g.op("ReduceMean", [sq], { axes: [-1], keepdims: 1 });
  const rms = g.op("Sqrt", [g.op("Add", [ms, epsC])]);
  return g.op("Mul", [g.op("Div", [x, rms]), w]);
}

/**
 * The pre-attention graph of one layer.
 *
 * Inputs: `x` [T, dim] f32 (the residual stream), `rope_cos` and
 * `rope_sin` [T, head_dim / 2] f32 (each row's RoPE angles: {@link ropeRows}
 * of its position; fed per run, so the graph holds no seq_len table).
 * Outputs: `q` [T, n_heads, head_dim], `k` [T, n_kv_heads, head_dim] with RoPE
 * applied, `v` [T, n_kv_heads, head_dim], all f32. When `weights` has q/k/v
 * biases (Qwen2 layout) they are added to the fused projection (one Add of
 * the concatenated [q_dim + 2·kv_dim] bias) before RoPE.
 *
 * RoPE rotates each adjacent pair (2i, 2i+1) of a head by angle
 * pos · θ^(−2i/head_dim), as llama2.c run.c (not the half-split layout of
 * Hugging Face checkpoints). q and k heads are rotated together.
 */
export function buildPreAttentionGraph(
  shape: ModelShape,
  weights: PreAttentionWeights,
  layer: number,
  weightDtype: WeightDtype = "f32",
): OnnxGraphBuilder {
  const { dim, nHeads, nKvHeads, headDim, normEps } = shape;
  const half = headDim / 2;
  const qDim = nHeads * headDim;
  const kvD = nKvHeads * headDim;
  const g = new OnnxGraphBuilder(`layer${layer}.pre`);
  const x = g.input(PRE.x, "float32", [BATCH_DIM, dim]);
  const cos = g.input(PRE.cos, "float32", [BATCH_DIM, half]);
  const sin = g.input(PRE.sin, "float32", [BATCH_DIM, half]);

  const h = rmsNorm(g, x, weights.rmsAtt, normEps, "rms_att");
  let qkv = projection(
    g,
    h,
    "wqkv",
    transposeConcat(
      [
        { w: weights.wq, rows: qDim },
        { w: weights.wk, rows: kvD },
        { w: weights.wv, rows: kvD },
      ],
      dim,
    ),
    [dim, qDim + 2 * kvD],
    weightDtype,
  );
  const { bq, bk, bv } = weights;
  if (bq || bk || bv) {
    // Qwen2's q/k/v biases, concatenated like the fused weight, added before RoPE.
    const bias = new Float32Array(qDim + 2 * kvD);
    if (bq) bias.set(bq, 0);
    if (bk) bias.set(bk, qDim);
    if (bv) bias.set(bv, qDim + kvD);
    qkv = g.op("Add", [qkv, g.f32("bqkv", bias, [qDim + 2 * kvD])]);
  }
  const [qk, vFlat] = g.node("Split", [qkv, g.i64("qkv.split", [qDim + kvD, kvD])], { axis: 1 }, 2) as [string, string];

  // RoPE over the q and k heads: [T, heads, half, 2] pairs, rotated by the
  // cos/sin rows of each position ([T, 1, half, 1] after Unsqueeze).
  const axes13 = g.i64("rope.axes", [1, 3]);
  const cosT = g.op("Unsqueeze", [cos, axes13]);
  const sinT = g.op("Unsqueeze", [sin, axes13]);
  const pairs = g.op("Reshape", [qk, g.i64("rope.pairs", [-1, nHeads + nKvHeads, half, 2])]);
  const [x0, x1] = g.node("Split", [pairs, g.i64("rope.split", [1, 1])], { axis: 3 }, 2) as [string, string];
  // run.c: v0' = v0·cos − v1·sin; v1' = v0·sin + v1·cos
  const r0 = g.op("Sub", [g.op("Mul", [x0, cosT]), g.op("Mul", [x1, sinT])]);
  const r1 = g.op("Add", [g.op("Mul", [x0, sinT]), g.op("Mul", [x1, cosT])]);
  const rotated = g.op("Reshape", [
    g.op("Concat", [r0, r1], { axis: 3 }),
    g.i64("rope.heads", [-1, nHeads + nKvHeads, headDim]),
  ]);
  g.node("Split", [rotated, g.i64("qk.split", [nHeads, nKvHeads])], { axis: 1 }, [PRE.q, PRE.k]);
  g.op("Reshape", [vFlat, g.i64("v.heads", [-1, nKvHeads, headDim])], {}, PRE.v);

  g.output(PRE.q, "float32", [BATCH_DIM, nHeads, headDim]);
  g.output(PRE.k, "float32", [BATCH_DIM, nKvHeads, headDim]);
  g.output(PRE.v, "float32", [BATCH_DIM, nKvHeads, headDim]);
  return g;
}

/**
 * The post-attention graph of one layer.
 *
 * Inputs: `x` [T, dim] f32 (the residual stream before this layer's
 * attention), `o` [T, n_heads·head_dim] f32 (attention output).
 * Output: `y` [T, dim] f32 = x' + W2 (silu(W1 h) ⊙ W3 h) with
 * x' = x + Wo o and h = RMSNorm(x') (SwiGLU, Shazeer 2020; llama2.c run.c).
 */
export function buildPostAttentionGraph(
  shape: ModelShape,
  weights: PostAttentionWeights,
  layer: number,
  weightDtype: WeightDtype = "f32",
): OnnxGraphBuilder {
  const { dim, hiddenDim, nHeads, headDim, normEps } = shape;
  const qDim = nHeads * headDim;
  const g = new OnnxGraphBuilder(`layer${layer}.post`);
  const x = g.input(POST.x, "float32", [BATCH_DIM, dim]);
  const o = g.input(POST.o, "float32", [BATCH_DIM, qDim]);

  const x1 = g.op("Add", [x, projection(g, o, "wo", transpose(weights.wo, dim, qDim), [qDim, dim], weightDtype)]);
  const h = rmsNorm(g, x1, weights.rmsFfn, normEps, "rms_ffn");
  const w13 = transposeConcat(
    [
      { w: weights.w1, rows: hiddenDim },
      { w: weights.w3, rows: hiddenDim },
    ],
    dim,
  );
  const [gate, up] = g.node(
    "Split",
    [projection(g, h, "w13", w13, [dim, 2 * hiddenDim], weightDtype), g.i64("w13.split", [hiddenDim, hiddenDim])],
    { axis: 1 },
    2,
  ) as [string, string];
  const act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]);
  const down = projection(g, act, "w2", transpose(weights.w2, dim, hiddenDim), [hiddenDim, dim], weightDtype);
  g.op("Add", [x1, down], {}, POST.y);
  g.output(POST.y, "float32", [BATCH_DIM, dim]);
  return g;
}

/**
 * The head graph: final RMSNorm and classifier.
 * Input: `x` [N, dim] f32 (one row per sequence). Output: `logits` [N, vocab] f32.
 */
export function buildHeadGraph(
  shape: ModelShape,
  rmsFinal: Float32Array,
  classifier: Float32Array,
  weightDtype: WeightDtype = "f32",
): OnnxGraphBuilder {
  const { dim, vocabSize, normEps } = shape;
  const g = new OnnxGraphBuilder("head");
  const x = g.input(HEAD.x, "float32", [BATCH_DIM, dim]);
  const h = rmsNorm(g, x, rmsFinal, normEps, "rms_final");
  projection(g, h, "classifier", transpose(classifier, vocabSize, dim), [dim, vocabSize], weightDtype, HEAD.logits);
  g.output(HEAD.logits, "float32", [BATCH_DIM, vocabSize]);
  return g;
}
