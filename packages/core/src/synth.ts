/**
 * Synthetic Llama weights from a seed, for benchmarks of shapes no real
 * checkpoint is at hand for (`tessera model synth`). The values are random,
 * so the text is nonsense, but the arithmetic, memory traffic and activation
 * ranges are those of a real model of the same shape.
 */
import type { LayerWeights, LlamaWeights } from "./checkpoint.js";
import type { ModelShape } from "./model-shape.js";

/**
 * FFN hidden size of a Llama model of width `dim`, as Meta's reference
 * `llama/model.py` (and llama2.c's `model.py`): 2/3 of 4·dim, rounded up to
 * a multiple of `multipleOf`. E.g. dim 1024 → 2816, dim 4096 → 11008.
 */
export function llamaHiddenDim(dim: number, multipleOf = 256): number {
  if (!Number.isInteger(dim) || dim < 1) throw new RangeError(`dim must be a positive integer, got ${dim}`);
  if (!Number.isInteger(multipleOf) || multipleOf < 1)
    throw new RangeError(`multipleOf must be a positive integer, got ${multipleOf}`);
  const hidden = Math.floor((2 * 4 * dim) / 3);
  return multipleOf * Math.ceil(hidden / multipleOf);
}

/** splitmix32's Weyl increment (2^32 / golden ratio). */
const GOLDEN_GAMMA = 0x9e3779b9;

/**
 * Deterministic weights for `shape` from `seed` (an integer in [0, 2^32)).
 * Every matrix [out, in] is uniform in ±√3/√in (variance 1/in, so a
 * projection of an RMS-1 vector has RMS ≈ 1 and activations stay O(1)
 * through any number of layers); the embedding is drawn the same way with
 * in = dim, so logits (embedding · normalised x) have RMS ≈ 1. RMSNorm weights
 * are 1, and the classifier is the embedding array (shared), as in the
 * llama2.c models. Values are drawn in a fixed order (embedding, then per
 * layer wq, wk, wv, wo, w1, w2, w3) from one splitmix32 stream, so the same
 * seed gives the same bytes on every machine.
 * @throws RangeError when `seed` is not an integer in [0, 2^32) or the shape
 *   is inconsistent (n_heads * head_dim must equal dim).
 */
export function synthesizeWeights(shape: ModelShape, seed: number): LlamaWeights {
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32)
    throw new RangeError(`seed must be an integer in [0, 2^32), got ${seed}`);
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize } = shape;
  if (nHeads * headDim !== dim)
    throw new RangeError(`n_heads * head_dim (${nHeads * headDim}) must equal dim (${dim})`);
  // splitmix32 (the 32-bit variant of Steele, Lea & Flood's SplitMix, with
  // MurmurHash3's fmix32 finaliser): a Weyl sequence hashed to 32 bits. Any
  // seed, 0 included, gives a full-period stream. Inlined in the fill loop
  // because a closure call per value doubles the time at 100M+ values.
  let state = seed | 0;
  const uniform = (out: number, inFeatures: number): Float32Array => {
    const a = Math.sqrt(3 / inFeatures);
    // Maps a uint32 u to [-a, a): u * 2a/2^32 - a.
    const mul = (2 * a) / 2 ** 32;
    const data = new Float32Array(out * inFeatures);
    let s = state;
    for (let i = 0; i < data.length; i++) {
      s = (s + GOLDEN_GAMMA) | 0;
      let z = Math.imul(s ^ (s >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      data[i] = ((z ^ (z >>> 16)) >>> 0) * mul - a;
    }
    state = s;
    return data;
  };
  const ones = (n: number): Float32Array => new Float32Array(n).fill(1);
  const kvDim = nKvHeads * headDim;
  const q = nHeads * headDim;
  const tokenEmbedding = uniform(vocabSize, dim);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < nLayers; l++) {
    const wq = uniform(q, dim);
    const wk = uniform(kvDim, dim);
    const wv = uniform(kvDim, dim);
    const wo = uniform(dim, q);
    const w1 = uniform(hiddenDim, dim);
    const w2 = uniform(dim, hiddenDim);
    const w3 = uniform(hiddenDim, dim);
    layers.push({ rmsAtt: ones(dim), wq, wk, wv, wo, rmsFfn: ones(dim), w1, w2, w3 });
  }
  return { tokenEmbedding, layers, rmsFinal: ones(dim), classifier: tokenEmbedding };
}
