/**
 * Synthetic Llama weights from a seed, for benchmarks of shapes no real
 * checkpoint is at hand for (`tessera model synth`). The values are random,
 * so the text is nonsense, but the arithmetic, memory traffic and activation
 * ranges are those of a real model of the same shape.
 */
import {
  LAYER_WEIGHT_NAMES,
  weightDims,
  type LayerWeightName,
  type LayerWeights,
  type LlamaWeights,
  type WeightName,
  type WeightReader,
} from "./checkpoint.js";
import type { ModelShape } from "@tessera/core";

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

/** Per-layer weights in the order they are drawn from the stream. */
const DRAW_ORDER = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] as const;
/** Biases, drawn after every matrix so a model with biases has the same matrices as one without. */
const BIAS_ORDER = ["bq", "bk", "bv"] as const;

/** Options of {@link synthesizeWeights} and {@link synthReader}. */
export interface SynthOptions {
  /**
   * Add q/k/v projection biases (Qwen2 layout), uniform in ±√3·`biasScale`
   * (RMS `biasScale`). @default false
   */
  qkvBias?: boolean;
  /** RMS of the biases. @default 0.5 */
  biasScale?: number;
  /**
   * Draw a separate classifier (lm_head, as Llama 2 7B+) instead of sharing
   * the embedding (as the llama2.c models). @default false
   */
  separateClassifier?: boolean;
}

function checkSynth(shape: ModelShape, seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32)
    throw new RangeError(`seed must be an integer in [0, 2^32), got ${seed}`);
  if (shape.nHeads * shape.headDim !== shape.dim)
    throw new RangeError(`n_heads * head_dim (${shape.nHeads * shape.headDim}) must equal dim (${shape.dim})`);
}

/**
 * Fills `n` values uniform in [-a, a) from splitmix32 (the 32-bit variant of
 * Steele, Lea & Flood's SplitMix, with MurmurHash3's fmix32 finaliser): a
 * Weyl sequence state_k = seed + k·γ (mod 2^32) hashed to 32 bits. Value k of
 * the stream depends only on seed + (k+1)·γ, so any tensor's values can be
 * drawn without drawing those before it (`first` = its index in the stream).
 * Inlined: a closure call per value doubles the time at 100M+ values.
 */
function uniformAt(seed: number, first: number, n: number, a: number): Float32Array {
  // Maps a uint32 u to [-a, a): u * 2a/2^32 - a.
  const mul = (2 * a) / 2 ** 32;
  const data = new Float32Array(n);
  // first·γ mod 2^32: Math.imul wraps exactly (first < 2^53 → ToInt32 is mod 2^32).
  let s = (seed + Math.imul(first % 2 ** 32, GOLDEN_GAMMA)) | 0;
  for (let i = 0; i < n; i++) {
    s = (s + GOLDEN_GAMMA) | 0;
    let z = Math.imul(s ^ (s >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    data[i] = ((z ^ (z >>> 16)) >>> 0) * mul - a;
  }
  return data;
}

/**
 * A {@link WeightReader} of the deterministic weights of `shape` from `seed`
 * (an integer in [0, 2^32)): each `read` computes one tensor, so a writer can
 * stream a model of any size holding one tensor at a time.
 *
 * Every matrix [out, in] is uniform in ±√3/√in (variance 1/in, so a
 * projection of an RMS-1 vector has RMS ≈ 1 and activations stay O(1)
 * through any number of layers); the embedding is drawn the same way with
 * in = dim, so logits (embedding · normalised x) have RMS ≈ 1. RMSNorm weights
 * are 1, and the classifier is the embedding (shared), as in the llama2.c
 * models, unless `separateClassifier`. Values come from one splitmix32 stream
 * in a fixed order (embedding, then per layer wq, wk, wv, wo, w1, w2, w3, then
 * the biases of every layer, then the separate classifier; biases and
 * classifier only when asked for), so the same seed gives the same bytes on
 * every machine, in any format and read order.
 * @throws RangeError when `seed` is not an integer in [0, 2^32) or the shape
 *   is inconsistent (n_heads * head_dim must equal dim); `read` throws it for
 *   an unknown weight or layer.
 */
export function synthReader(shape: ModelShape, seed: number, options: SynthOptions = {}): WeightReader {
  checkSynth(shape, seed);
  const { dim, nLayers, vocabSize } = shape;
  const size = (name: WeightName) => weightDims(shape, name).reduce((a, d) => a * d, 1);
  const perLayer = DRAW_ORDER.reduce((a, n) => a + size(n), 0);
  const biasPerLayer = BIAS_ORDER.reduce((a, n) => a + size(n), 0);
  const layersStart = vocabSize * dim;
  const biasStart = layersStart + nLayers * perLayer;
  // The bias region is reserved whether or not biases are drawn, so the
  // classifier's values do not depend on `qkvBias`.
  const classifierStart = biasStart + nLayers * biasPerLayer;
  const biasA = Math.sqrt(3) * (options.biasScale ?? 0.5);
  return {
    read(name: WeightName, layer?: number): Float32Array {
      if (name === "classifier" && options.separateClassifier)
        return uniformAt(seed, classifierStart, vocabSize * dim, Math.sqrt(3 / dim));
      if (name === "tokenEmbedding" || name === "classifier")
        return uniformAt(seed, 0, vocabSize * dim, Math.sqrt(3 / dim));
      if (name === "rmsFinal" || name === "rmsAtt" || name === "rmsFfn") return new Float32Array(dim).fill(1);
      if (layer === undefined || !Number.isInteger(layer) || layer < 0 || layer >= nLayers)
        throw new RangeError(`synthetic ${name}: layer ${layer} is not in [0, ${nLayers})`);
      const bias = BIAS_ORDER.indexOf(name as (typeof BIAS_ORDER)[number]);
      if (bias >= 0) {
        if (!options.qkvBias) throw new RangeError(`synthetic model has no ${name} (no q/k/v bias)`);
        let first = biasStart + layer * biasPerLayer;
        for (let i = 0; i < bias; i++) first += size(BIAS_ORDER[i]!);
        return uniformAt(seed, first, size(name), biasA);
      }
      const k = DRAW_ORDER.indexOf(name as (typeof DRAW_ORDER)[number]);
      if (k < 0) throw new RangeError(`synthetic model has no weight ${name}`);
      let first = layersStart + layer * perLayer;
      for (let i = 0; i < k; i++) first += size(DRAW_ORDER[i]!);
      const [, inFeatures] = weightDims(shape, name) as [number, number];
      return uniformAt(seed, first, size(name), Math.sqrt(3 / inFeatures));
    },
  };
}

/**
 * Every weight of {@link synthReader}`(shape, seed, options)` in memory; the
 * classifier is the embedding array unless `separateClassifier`.
 * @throws RangeError as {@link synthReader}.
 */
export function synthesizeWeights(shape: ModelShape, seed: number, options: SynthOptions = {}): LlamaWeights {
  const reader = synthReader(shape, seed, options);
  const read = (name: WeightName, layer?: number) => reader.read(name, layer) as Float32Array;
  const tokenEmbedding = read("tokenEmbedding");
  const layers: LayerWeights[] = [];
  for (let l = 0; l < shape.nLayers; l++) {
    const w = {} as Record<LayerWeightName, Float32Array>;
    for (const name of LAYER_WEIGHT_NAMES) {
      if (options.qkvBias || !(BIAS_ORDER as readonly string[]).includes(name)) w[name] = read(name, l);
    }
    layers.push(w);
  }
  const classifier = options.separateClassifier ? read("classifier") : tokenEmbedding;
  return { tokenEmbedding, layers, rmsFinal: read("rmsFinal"), classifier };
}
