/**
 * Hugging Face Llama-family folders: `config.json` plus `model.safetensors`
 * or a sharded `model.safetensors.index.json`, in F32, F16 or BF16, loaded
 * into the same {@link Checkpoint} / {@link LlamaWeights} as a llama2.c file.
 *
 * Rotary layout: Meta's Llama (and llama2.c) rotate adjacent pairs
 * (x[2i], x[2i+1]) of each head; Hugging Face's `LlamaAttention` rotates
 * halves (x[i], x[i + head_dim/2]). `transformers`'
 * `convert_llama_weights_to_hf.py` therefore permutes the rows of q_proj and
 * k_proj per head (`permute`: view(heads, head_dim/2, 2, dim).transpose(1, 2));
 * llama2.c's `export.py` undoes it (`permute_reverse`). We undo it on load
 * and apply it on write, so the rest of Tessera keeps the adjacent-pair layout.
 *
 * Not yet read: q/k/v biases (Qwen2), `rope_scaling`, and keeping f16/bf16
 * weights on the gpu-node (everything is converted to f32 on load).
 */
import { readFile, stat, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { CheckpointError } from "./errors.js";
import type { ModelShape } from "./model-shape.js";
import {
  loadCheckpoint,
  readCheckpointHeader,
  type Checkpoint,
  type CheckpointHeader,
  type LayerWeights,
  type LlamaWeights,
} from "./checkpoint.js";
import {
  openSafetensorsFolder,
  writeSafetensorsFolder,
  type SafetensorsDtype,
  type SafetensorsStore,
  type SafetensorsTensor,
} from "./safetensors.js";

/** Name of the config file in a Hugging Face folder. */
export const HF_CONFIG_FILE = "config.json";

/** The fields of a Llama-family `config.json` Tessera reads. */
export interface HfLlamaConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  vocab_size: number;
  max_position_embeddings: number;
  rope_theta?: number;
  rms_norm_eps?: number;
  tie_word_embeddings?: boolean;
  head_dim?: number;
  hidden_act?: string;
  rope_scaling?: unknown;
  torch_dtype?: string;
}

/** Header of a Hugging Face folder: a {@link CheckpointHeader} (format "hf") plus its storage. */
export interface HfModelHeader extends CheckpointHeader {
  format: "hf";
  /** Element type of the stored weights (of `model.embed_tokens.weight`). */
  dtype: SafetensorsDtype;
  /** The safetensors files, by name. */
  files: string[];
}

/** Weight dtype names of `--dtype` and `writeHfModel`. */
export type HfDtype = "f32" | "f16" | "bf16";

const DTYPES: Record<HfDtype, SafetensorsDtype> = { f32: "F32", f16: "F16", bf16: "BF16" };
const TORCH_DTYPES: Record<HfDtype, string> = { f32: "float32", f16: "float16", bf16: "bfloat16" };

/**
 * Reorders the rows of a q or k projection [nHeads * headDim, dim] from
 * Meta/llama2.c's adjacent-pair rotary layout to Hugging Face's half-split
 * layout: within each head, HF row j*(headDim/2) + i is Meta row 2i + j
 * (`convert_llama_weights_to_hf.py` `permute`).
 * @throws RangeError when `w.length` is not nHeads * headDim * dim for an even headDim.
 */
export function permuteRotaryToHf(w: Float32Array, nHeads: number, headDim: number, dim: number): Float32Array {
  return permuteRows(w, nHeads, headDim, dim, true);
}

/** The inverse of {@link permuteRotaryToHf} (llama2.c `export.py` `permute_reverse`). */
export function permuteRotaryFromHf(w: Float32Array, nHeads: number, headDim: number, dim: number): Float32Array {
  return permuteRows(w, nHeads, headDim, dim, false);
}

function permuteRows(w: Float32Array, nHeads: number, headDim: number, dim: number, toHf: boolean): Float32Array {
  if (headDim % 2 !== 0 || w.length !== nHeads * headDim * dim) {
    throw new RangeError(`cannot permute ${w.length} values as ${nHeads} heads × ${headDim} rows × ${dim}`);
  }
  const half = headDim / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const meta = h * headDim + 2 * i + j;
        const hf = h * headDim + j * half + i;
        const [from, to] = toHf ? [meta, hf] : [hf, meta];
        out.set(w.subarray(from * dim, (from + 1) * dim), to * dim);
      }
    }
  }
  return out;
}

async function readConfig(dir: string): Promise<HfLlamaConfig> {
  const path = join(dir, HF_CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new CheckpointError(path, `cannot read: ${(err as Error).message}`, undefined, undefined, { cause: err });
  }
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new CheckpointError(path, `is not valid JSON: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
  }
  const required = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
  ];
  for (const k of [...required, "num_key_value_heads", "head_dim"]) {
    const v = c[k];
    if (v === undefined || v === null) {
      if (required.includes(k)) throw new CheckpointError(path, `has no ${k}`);
      continue;
    }
    if (!(typeof v === "number" && Number.isInteger(v) && v > 0)) {
      throw new CheckpointError(path, `${k} = ${JSON.stringify(v)} is not a positive integer`);
    }
  }
  if (c["hidden_act"] !== undefined && c["hidden_act"] !== "silu") {
    throw new CheckpointError(path, `hidden_act ${JSON.stringify(c["hidden_act"])} is not supported (only silu)`);
  }
  if (c["rope_scaling"] !== undefined && c["rope_scaling"] !== null) {
    throw new CheckpointError(path, "rope_scaling is not supported yet");
  }
  return c as unknown as HfLlamaConfig;
}

function shapeOf(dir: string, c: HfLlamaConfig): ModelShape {
  const nHeads = c.num_attention_heads;
  const nKvHeads = c.num_key_value_heads ?? nHeads;
  const path = join(dir, HF_CONFIG_FILE);
  if (c.head_dim === undefined && c.hidden_size % nHeads !== 0) {
    throw new CheckpointError(path, `hidden_size ${c.hidden_size} is not a multiple of num_attention_heads ${nHeads}`);
  }
  if (nHeads % nKvHeads !== 0) {
    throw new CheckpointError(
      path,
      `num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKvHeads}`,
    );
  }
  const headDim = c.head_dim ?? c.hidden_size / nHeads;
  if (headDim % 2 !== 0) throw new CheckpointError(path, `head_dim ${headDim} is odd; rotary needs pairs`);
  return {
    dim: c.hidden_size,
    hiddenDim: c.intermediate_size,
    nLayers: c.num_hidden_layers,
    nHeads,
    nKvHeads,
    vocabSize: c.vocab_size,
    seqLen: c.max_position_embeddings,
    headDim,
    ropeTheta: c.rope_theta ?? 10000,
    normEps: c.rms_norm_eps ?? 1e-6,
  };
}

/** Tensor names and [out, in] shapes of a Llama-family model, in `save_pretrained` order. */
function tensorShapes(shape: ModelShape, tied: boolean): [string, number[]][] {
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize } = shape;
  const out: [string, number[]][] = [["model.embed_tokens.weight", [vocabSize, dim]]];
  for (let l = 0; l < nLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}input_layernorm.weight`, [dim]],
      [`${p}self_attn.q_proj.weight`, [nHeads * headDim, dim]],
      [`${p}self_attn.k_proj.weight`, [nKvHeads * headDim, dim]],
      [`${p}self_attn.v_proj.weight`, [nKvHeads * headDim, dim]],
      [`${p}self_attn.o_proj.weight`, [dim, nHeads * headDim]],
      [`${p}post_attention_layernorm.weight`, [dim]],
      [`${p}mlp.gate_proj.weight`, [hiddenDim, dim]],
      [`${p}mlp.up_proj.weight`, [hiddenDim, dim]],
      [`${p}mlp.down_proj.weight`, [dim, hiddenDim]],
    );
  }
  out.push(["model.norm.weight", [dim]]);
  if (!tied) out.push(["lm_head.weight", [vocabSize, dim]]);
  return out;
}

async function openHf(dir: string): Promise<{ header: HfModelHeader; store: SafetensorsStore }> {
  const config = await readConfig(dir);
  const shape = shapeOf(dir, config);
  const store = await openSafetensorsFolder(dir);
  // tie_word_embeddings defaults to true in PretrainedConfig, but Llama's
  // config class defaults it to false; a folder without lm_head is tied either way.
  const tied = config.tie_word_embeddings ?? !store.weightMap.has("lm_head.weight");
  for (const name of store.weightMap.keys()) {
    if (/\.(q|k|v|o)_proj\.bias$/.test(name)) {
      throw new CheckpointError(
        join(dir, HF_CONFIG_FILE),
        `has attention bias ${name} (Qwen2 layout): not supported yet`,
      );
    }
  }
  for (const [name, dims] of tensorShapes(shape, tied)) {
    const info = store.info(name);
    if (!info)
      throw new CheckpointError(dir, `has no tensor ${name} (looked in ${[...store.files.keys()].join(", ")})`);
    if (info.shape.length !== dims.length || info.shape.some((d, i) => d !== dims[i])) {
      throw new CheckpointError(
        join(dir, store.weightMap.get(name)!),
        `tensor ${name} has shape [${info.shape.join(", ")}], config.json implies [${dims.join(", ")}]`,
      );
    }
  }
  const header: HfModelHeader = {
    path: dir,
    format: "hf",
    shape,
    sharedClassifier: tied,
    headerBytes: 0,
    expectedBytes: store.totalBytes,
    dtype: store.info("model.embed_tokens.weight")!.dtype,
    files: [...store.files.keys()],
  };
  return { header, store };
}

/**
 * Reads a Hugging Face folder's config.json and safetensors headers (no
 * weights) and checks every tensor the config implies is present with its shape.
 * `expectedBytes` is the total size of the safetensors files.
 * @throws CheckpointError naming the file that is missing, malformed or inconsistent.
 */
export async function readHfModelHeader(dir: string): Promise<HfModelHeader> {
  return (await openHf(dir)).header;
}

/**
 * Loads a Hugging Face Llama-family folder into f32 {@link LlamaWeights}
 * (F16/BF16 converted), undoing the q/k rotary permutation (see the module comment).
 * @throws CheckpointError as {@link readHfModelHeader}, and when a shard is truncated.
 */
export async function loadHfModel(dir: string): Promise<Checkpoint & HfModelHeader> {
  const { header, store } = await openHf(dir);
  const { nLayers, nHeads, nKvHeads, headDim, dim } = header.shape;
  const tokenEmbedding = await store.read("model.embed_tokens.weight");
  const layers: LayerWeights[] = [];
  for (let l = 0; l < nLayers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      rmsAtt: await store.read(`${p}input_layernorm.weight`),
      wq: permuteRotaryFromHf(await store.read(`${p}self_attn.q_proj.weight`), nHeads, headDim, dim),
      wk: permuteRotaryFromHf(await store.read(`${p}self_attn.k_proj.weight`), nKvHeads, headDim, dim),
      wv: await store.read(`${p}self_attn.v_proj.weight`),
      wo: await store.read(`${p}self_attn.o_proj.weight`),
      rmsFfn: await store.read(`${p}post_attention_layernorm.weight`),
      w1: await store.read(`${p}mlp.gate_proj.weight`),
      w2: await store.read(`${p}mlp.down_proj.weight`),
      w3: await store.read(`${p}mlp.up_proj.weight`),
    });
  }
  const rmsFinal = await store.read("model.norm.weight");
  const classifier = header.sharedClassifier ? tokenEmbedding : await store.read("lm_head.weight");
  return { ...header, weights: { tokenEmbedding, layers, rmsFinal, classifier } };
}

/**
 * Writes `weights` (f32, llama2.c layout) as a Hugging Face Llama folder:
 * `config.json` (LlamaForCausalLM) and `model.safetensors` (or shards +
 * index above `shardBytes`), in `dtype` (f32 by default), with q/k rows
 * permuted to HF's rotary layout. Creates `dir` if needed.
 * @returns the file names written.
 * @throws RangeError when a weight's length does not match `shape`.
 */
export async function writeHfModel(
  dir: string,
  shape: ModelShape,
  weights: LlamaWeights,
  options: { dtype?: HfDtype; shardBytes?: number; sharedClassifier?: boolean } = {},
): Promise<string[]> {
  const dtype = options.dtype ?? "f32";
  const tied = options.sharedClassifier ?? weights.classifier === weights.tokenEmbedding;
  const { nHeads, nKvHeads, headDim, dim } = shape;
  const data = new Map<string, Float32Array>([
    ["model.embed_tokens.weight", weights.tokenEmbedding],
    ["model.norm.weight", weights.rmsFinal],
  ]);
  if (!tied) data.set("lm_head.weight", weights.classifier);
  weights.layers.forEach((w, l) => {
    const p = `model.layers.${l}.`;
    data.set(`${p}input_layernorm.weight`, w.rmsAtt);
    data.set(`${p}self_attn.q_proj.weight`, permuteRotaryToHf(w.wq, nHeads, headDim, dim));
    data.set(`${p}self_attn.k_proj.weight`, permuteRotaryToHf(w.wk, nKvHeads, headDim, dim));
    data.set(`${p}self_attn.v_proj.weight`, w.wv);
    data.set(`${p}self_attn.o_proj.weight`, w.wo);
    data.set(`${p}post_attention_layernorm.weight`, w.rmsFfn);
    data.set(`${p}mlp.gate_proj.weight`, w.w1);
    data.set(`${p}mlp.up_proj.weight`, w.w3);
    data.set(`${p}mlp.down_proj.weight`, w.w2);
  });
  if (weights.layers.length !== shape.nLayers) {
    throw new RangeError(`shape has ${shape.nLayers} layers, weights have ${weights.layers.length}`);
  }
  const tensors: SafetensorsTensor[] = tensorShapes(shape, tied).map(([name, dims]) => {
    const d = data.get(name)!;
    const n = dims.reduce((a, x) => a * x, 1);
    if (d.length !== n) throw new RangeError(`${name}: expected ${n} values, got ${d.length}`);
    return { name, shape: dims, data: d };
  });
  await mkdir(dir, { recursive: true });
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: shape.dim,
    intermediate_size: shape.hiddenDim,
    num_hidden_layers: shape.nLayers,
    num_attention_heads: shape.nHeads,
    num_key_value_heads: shape.nKvHeads,
    head_dim: shape.headDim,
    vocab_size: shape.vocabSize,
    max_position_embeddings: shape.seqLen,
    rope_theta: shape.ropeTheta,
    rms_norm_eps: shape.normEps,
    tie_word_embeddings: tied,
    hidden_act: "silu",
    attention_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: TORCH_DTYPES[dtype],
  };
  await writeFile(join(dir, HF_CONFIG_FILE), JSON.stringify(config, null, 2) + "\n");
  const files = await writeSafetensorsFolder(dir, tensors, {
    dtype: DTYPES[dtype],
    ...(options.shardBytes !== undefined ? { shardBytes: options.shardBytes } : {}),
  });
  return [HF_CONFIG_FILE, ...files];
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    throw new CheckpointError(path, `cannot read checkpoint: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
  }
}

/**
 * Loads a model by path: a directory is a Hugging Face folder
 * ({@link loadHfModel}), a file a llama2.c checkpoint (`loadCheckpoint`).
 * @throws CheckpointError naming the file when it is missing or bad.
 */
export async function loadModel(path: string): Promise<Checkpoint> {
  return (await isDirectory(path)) ? loadHfModel(path) : loadCheckpoint(path);
}

/**
 * Reads a model's header by path, dispatching as {@link loadModel}.
 * @throws CheckpointError naming the file when it is missing or bad.
 */
export async function readModelHeader(path: string): Promise<CheckpointHeader> {
  return (await isDirectory(path)) ? readHfModelHeader(path) : readCheckpointHeader(path);
}
