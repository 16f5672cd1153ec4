/**
 * The shape of a Llama-architecture transformer (llama2.c's `Config`).
 * head_dim = dim / n_heads; kv_dim = n_kv_heads * head_dim (GQA when
 * n_kv_heads < n_heads).
 */
export interface ModelShape {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  /** Maximum context in positions (tokens). */
  seqLen: number;
  headDim: number;
  /** RoPE base; 10000 for llama2.c checkpoints. */
  ropeTheta: number;
  /** RMSNorm epsilon; 1e-5 for llama2.c checkpoints. */
  normEps: number;
}

/** K/V f32 values per position per layer: n_kv_heads * head_dim. */
export function kvDim(shape: ModelShape): number {
  return shape.nKvHeads * shape.headDim;
}

/** Bytes of KV cache (K and V, f32, all layers) one position takes. */
export function kvBytesPerPosition(shape: Pick<ModelShape, "nLayers" | "nKvHeads" | "headDim">): number {
  return shape.nLayers * 2 * shape.nKvHeads * shape.headDim * 4;
}

/**
 * Number of weights (parameters) of a model of this shape: embedding,
 * classifier unless shared, per layer two RMSNorm weights, q/k/v/o and the
 * three FFN matrices (plus q/k/v biases with `qkvBias`, Qwen2 layout), and
 * the final norm.
 */
export function parameterCount(shape: ModelShape, sharedClassifier: boolean, qkvBias = false): number {
  const { dim, hiddenDim, nLayers, vocabSize } = shape;
  const kv = kvDim(shape);
  const q = shape.nHeads * shape.headDim;
  const perLayer = 2 * dim + 2 * dim * q + dim * kv * 2 + 3 * dim * hiddenDim + (qkvBias ? q + 2 * kv : 0);
  return vocabSize * dim * (sharedClassifier ? 1 : 2) + nLayers * perLayer + dim;
}
