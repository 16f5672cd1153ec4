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
 * Layouts: Llama, Mistral (a `sliding_window` shorter than
 * `max_position_embeddings` caps the context at the window, inside which
 * sliding-window attention is plain causal attention) and Qwen2 (q/k/v
 * projection biases, read when config.json has `model_type` "qwen2" or
 * `attention_bias: true`; the q and k biases are permuted like their rows).
 * Not read: `rope_scaling`. Weights are read one tensor at a time with
 * positional reads ({@link openHfModel}) and converted to f32.
 */
import { readFile, stat, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { CheckpointError, type ModelShape } from "@tessera/core";
import {
  openCheckpoint,
  readAllWeights,
  readCheckpointHeader,
  weightsReader,
  type Checkpoint,
  type CheckpointHeader,
  type LlamaWeights,
  type ModelSource,
  type WeightName,
  type WeightReader,
} from "./checkpoint.js";
import {
  openSafetensorsFolder,
  writeSafetensorsFolder,
  type SafetensorsDtype,
  type SafetensorsStore,
  type SafetensorsTensor,
} from "./safetensors.js";
import { checkHfArchitecture, checkHfTensors } from "./hf-architecture.js";
import { MODEL_LIMITS, checkModelSize, checkPositiveNumber, shown } from "./model-limits.js";

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
  /** "llama", "mistral", "qwen2", ... */
  model_type?: string;
  /** q/k/v/o projection biases (Llama config); Qwen2 always has q/k/v biases. */
  attention_bias?: boolean;
  /** Mistral / Qwen2 sliding-window attention span in positions (null: none). */
  sliding_window?: number | null;
  /** Qwen2: whether `sliding_window` is used. */
  use_sliding_window?: boolean;
}

/** Header of a Hugging Face folder: a {@link CheckpointHeader} (format "hf") plus its storage. */
export interface HfModelHeader extends CheckpointHeader {
  format: "hf";
  /** Element type of the stored weights (of `model.embed_tokens.weight`). */
  dtype: SafetensorsDtype;
  /** The safetensors files, by name. */
  files: string[];
  qkvBias: boolean;
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

/**
 * Applies the rotary row permutation to a named weight when it has one: wq and
 * bq over n_heads, wk and bk over n_kv_heads (a bias is one column); other
 * weights come back unchanged. `toHf` picks the direction.
 */
function permuteRotaryWeight(name: WeightName, w: Float32Array, shape: ModelShape, toHf: boolean): Float32Array {
  const { nHeads, nKvHeads, headDim, dim } = shape;
  const heads = name === "wq" || name === "bq" ? nHeads : name === "wk" || name === "bk" ? nKvHeads : 0;
  if (heads === 0) return w;
  return permuteRows(w, heads, headDim, name === "wq" || name === "wk" ? dim : 1, toHf);
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
  checkHfArchitecture(path, c);
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
    checkModelSize(path, k, v, k === "max_position_embeddings" ? MODEL_LIMITS.maxSeqLen : MODEL_LIMITS.maxDimension);
  }
  for (const k of ["rope_theta", "rms_norm_eps"]) {
    if (c[k] !== undefined && c[k] !== null) checkPositiveNumber(path, k, c[k]);
  }
  for (const k of ["tie_word_embeddings", "attention_bias", "use_sliding_window"]) {
    if (c[k] !== undefined && c[k] !== null && typeof c[k] !== "boolean") {
      throw new CheckpointError(path, `${k} = ${shown(c[k])} is not a boolean`);
    }
  }
  if (c["hidden_act"] !== undefined && c["hidden_act"] !== "silu") {
    throw new CheckpointError(path, `hidden_act ${JSON.stringify(c["hidden_act"])} is not supported (only silu)`);
  }
  if (c["rope_scaling"] !== undefined && c["rope_scaling"] !== null) {
    throw new CheckpointError(path, "rope_scaling is not supported yet");
  }
  const window = c["sliding_window"];
  if (
    window !== undefined &&
    window !== null &&
    !(typeof window === "number" && Number.isInteger(window) && window > 0)
  ) {
    throw new CheckpointError(path, `sliding_window = ${shown(window)} is not a positive integer or null`);
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
    seqLen: Math.min(c.max_position_embeddings, slidingWindow(c) ?? Infinity),
    headDim,
    ropeTheta: c.rope_theta ?? 10000,
    normEps: c.rms_norm_eps ?? 1e-6,
  };
}

/**
 * The sliding-window span that applies, if any: Mistral's `sliding_window`
 * (null or absent: none), Qwen2's only with `use_sliding_window`.
 */
function slidingWindow(c: HfLlamaConfig): number | undefined {
  if (c.sliding_window === undefined || c.sliding_window === null) return undefined;
  if (c.model_type === "qwen2" && !c.use_sliding_window) return undefined;
  return c.sliding_window;
}

/** Whether a config implies q/k/v projection biases (Qwen2 layout). */
function hasQkvBias(c: HfLlamaConfig): boolean {
  return c.model_type === "qwen2" || c.attention_bias === true;
}

/** HF tensor name of each Tessera per-layer weight (after `model.layers.{l}.`). */
const HF_LAYER_NAMES: Record<Exclude<WeightName, "tokenEmbedding" | "rmsFinal" | "classifier">, string> = {
  rmsAtt: "input_layernorm.weight",
  wq: "self_attn.q_proj.weight",
  wk: "self_attn.k_proj.weight",
  wv: "self_attn.v_proj.weight",
  wo: "self_attn.o_proj.weight",
  rmsFfn: "post_attention_layernorm.weight",
  w1: "mlp.gate_proj.weight",
  w2: "mlp.down_proj.weight",
  w3: "mlp.up_proj.weight",
  bq: "self_attn.q_proj.bias",
  bk: "self_attn.k_proj.bias",
  bv: "self_attn.v_proj.bias",
};

/** HF tensor name of a Tessera weight (`classifier` is `lm_head.weight`; a tied model has none). */
function hfName(name: WeightName, layer?: number): string {
  if (name === "tokenEmbedding") return "model.embed_tokens.weight";
  if (name === "rmsFinal") return "model.norm.weight";
  if (name === "classifier") return "lm_head.weight";
  if (layer === undefined) throw new RangeError(`weight ${name} needs a layer index`);
  return `model.layers.${layer}.${HF_LAYER_NAMES[name]}`;
}

/** Tensor names and [out, in] shapes of a Llama-family model, in `save_pretrained` order. */
function tensorShapes(shape: ModelShape, tied: boolean, qkvBias = false): [string, number[]][] {
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize } = shape;
  const out: [string, number[]][] = [["model.embed_tokens.weight", [vocabSize, dim]]];
  for (let l = 0; l < nLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}input_layernorm.weight`, [dim]],
      [`${p}self_attn.q_proj.weight`, [nHeads * headDim, dim]],
      [`${p}self_attn.k_proj.weight`, [nKvHeads * headDim, dim]],
      [`${p}self_attn.v_proj.weight`, [nKvHeads * headDim, dim]],
      ...((qkvBias
        ? [
            [`${p}self_attn.q_proj.bias`, [nHeads * headDim]],
            [`${p}self_attn.k_proj.bias`, [nKvHeads * headDim]],
            [`${p}self_attn.v_proj.bias`, [nKvHeads * headDim]],
          ]
        : []) as [string, number[]][]),
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

/**
 * Refuses a config.json whose num_hidden_layers disagrees with the layers the
 * safetensors hold (`model.layers.{l}.*`), before a per-layer list is built
 * from it (so a huge num_hidden_layers allocates nothing).
 * @throws CheckpointError naming config.json and num_hidden_layers.
 */
function checkHfLayers(dir: string, names: Iterable<string>, nLayers: number): void {
  let held = 0;
  for (const name of names) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) held = Math.max(held, Number(m[1]) + 1);
  }
  if (held !== nLayers) {
    throw new CheckpointError(
      join(dir, HF_CONFIG_FILE),
      `num_hidden_layers = ${nLayers}, but the safetensors hold ${held} layers (model.layers.{l} tensors)`,
    );
  }
}

async function openHf(dir: string): Promise<{ header: HfModelHeader; store: SafetensorsStore }> {
  const config = await readConfig(dir);
  const shape = shapeOf(dir, config);
  const store = await openSafetensorsFolder(dir);
  // tie_word_embeddings defaults to true in PretrainedConfig, but Llama's
  // config class defaults it to false; a folder without lm_head is tied either way.
  const tied = config.tie_word_embeddings ?? !store.weightMap.has("lm_head.weight");
  const qkvBias = hasQkvBias(config);
  for (const name of store.weightMap.keys()) {
    if (/\.o_proj\.bias$/.test(name) || (!qkvBias && /\.(q|k|v)_proj\.bias$/.test(name))) {
      throw new CheckpointError(
        join(dir, HF_CONFIG_FILE),
        `the safetensors have ${name}, which this config does not use (q/k/v biases are read for model_type "qwen2" or attention_bias: true; o_proj biases never)`,
      );
    }
  }
  checkHfLayers(dir, store.weightMap.keys(), shape.nLayers);
  checkHfTensors(dir, store.weightMap.keys(), new Set(tensorShapes(shape, tied, qkvBias).map(([n]) => n)), tied);
  for (const [name, dims] of tensorShapes(shape, tied, qkvBias)) {
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
    qkvBias,
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
 * Opens a Hugging Face Llama-family folder for reading tensor by tensor:
 * each `read` is a positional read of one tensor from its shard, converted
 * to f32 (F16/BF16), with the q/k rotary permutation (rows, and biases)
 * undone (see the module comment). A tied classifier reads the embedding.
 * @throws CheckpointError as {@link readHfModelHeader}; `read` throws it when
 *   a shard was truncated since, and RangeError for a weight the model has not.
 */
export async function openHfModel(dir: string): Promise<ModelSource & HfModelHeader> {
  const { header, store } = await openHf(dir);
  return {
    ...header,
    async read(name: WeightName, layer?: number): Promise<Float32Array> {
      if ((name === "bq" || name === "bk" || name === "bv") && !header.qkvBias)
        throw new RangeError(`${dir}: model has no ${name} (no q/k/v bias)`);
      const tensor =
        name === "classifier" && header.sharedClassifier ? "model.embed_tokens.weight" : hfName(name, layer);
      return permuteRotaryWeight(name, await store.read(tensor), header.shape, false);
    },
  };
}

/**
 * Loads a Hugging Face Llama-family folder into f32 {@link LlamaWeights}
 * (F16/BF16 converted), undoing the q/k rotary permutation (see the module comment).
 * @throws CheckpointError as {@link readHfModelHeader}, and when a shard is truncated.
 */
export async function loadHfModel(dir: string): Promise<Checkpoint & HfModelHeader> {
  const source = await openHfModel(dir);
  const { read: _read, ...header } = source;
  return { ...header, weights: await readAllWeights(source) };
}

/** Options of {@link writeHfModel}. */
export interface WriteHfModelOptions {
  /** Stored element type. @default "f32" */
  dtype?: HfDtype;
  /** Split into shards of at most this many bytes (plus an index). @default one file */
  shardBytes?: number;
  /** Write no lm_head (tie_word_embeddings). @default classifier === embedding for in-memory weights, true for a reader */
  sharedClassifier?: boolean;
  /** Write q/k/v biases (Qwen2 layout, model_type "qwen2"). @default whether layer 0 has `bq`, false for a reader */
  qkvBias?: boolean;
  /** Called after each tensor with the tensor bytes written so far and their total. */
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
}

/**
 * Writes a model (f32, llama2.c layout) as a Hugging Face folder:
 * `config.json` (LlamaForCausalLM, or Qwen2ForCausalLM with q/k/v biases)
 * and `model.safetensors` (or shards + index above `shardBytes`), in `dtype`
 * (f32 by default), with q/k rows (and biases) permuted to HF's rotary layout,
 * the convention {@link openHfModel} undoes. `weights` may be a
 * {@link WeightReader} (a synthetic model, an opened file): tensors are then
 * read, converted and written one at a time, so memory holds one tensor.
 * No tokenizer is written. Creates `dir` if needed.
 * @returns the file names written.
 * @throws RangeError when a weight's length does not match `shape`.
 */
export async function writeHfModel(
  dir: string,
  shape: ModelShape,
  weights: LlamaWeights | WeightReader,
  options: WriteHfModelOptions = {},
): Promise<string[]> {
  const dtype = options.dtype ?? "f32";
  const inMemory = !("read" in weights);
  if (inMemory && weights.layers.length !== shape.nLayers) {
    throw new RangeError(`shape has ${shape.nLayers} layers, weights have ${weights.layers.length}`);
  }
  const tied = options.sharedClassifier ?? (inMemory ? weights.classifier === weights.tokenEmbedding : true);
  const qkvBias = options.qkvBias ?? (inMemory ? weights.layers[0]?.bq !== undefined : false);
  const reader = inMemory ? weightsReader(weights) : weights;
  const byHfName = new Map<string, [WeightName, number | undefined]>();
  byHfName.set(hfName("tokenEmbedding"), ["tokenEmbedding", undefined]);
  byHfName.set(hfName("rmsFinal"), ["rmsFinal", undefined]);
  byHfName.set(hfName("classifier"), ["classifier", undefined]);
  for (let l = 0; l < shape.nLayers; l++) {
    for (const n of Object.keys(HF_LAYER_NAMES) as (keyof typeof HF_LAYER_NAMES)[]) byHfName.set(hfName(n, l), [n, l]);
  }
  const produce = async (hf: string, n: number): Promise<Float32Array> => {
    const [name, layer] = byHfName.get(hf)!;
    const w = await reader.read(name, layer);
    if (w.length !== n) throw new RangeError(`${hf}: expected ${n} values, got ${w.length}`);
    return permuteRotaryWeight(name, w, shape, true);
  };
  const shapes = tensorShapes(shape, tied, qkvBias);
  const tensors: SafetensorsTensor[] = shapes.map(([name, dims]) => {
    const n = dims.reduce((a, x) => a * x, 1);
    return { name, shape: dims, data: () => produce(name, n) };
  });
  if (inMemory) {
    // Fail before writing anything.
    for (const t of tensors) {
      const [name, layer] = byHfName.get(t.name)!;
      const n = t.shape.reduce((a, x) => a * x, 1);
      const got = (await reader.read(name, layer)).length;
      if (got !== n) throw new RangeError(`${t.name}: expected ${n} values, got ${got}`);
    }
  }
  await mkdir(dir, { recursive: true });
  const config = {
    architectures: [qkvBias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"],
    model_type: qkvBias ? "qwen2" : "llama",
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
    attention_bias: qkvBias,
    ...(qkvBias ? { use_sliding_window: false, sliding_window: null } : {}),
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: TORCH_DTYPES[dtype],
  };
  await writeFile(join(dir, HF_CONFIG_FILE), JSON.stringify(config, null, 2) + "\n");
  const bytesPer = DTYPES[dtype] === "F32" ? 4 : 2;
  const totalBytes = shapes.reduce((a, [, d]) => a + bytesPer * d.reduce((x, y) => x * y, 1), 0);
  const files = await writeSafetensorsFolder(dir, tensors, {
    dtype: DTYPES[dtype],
    ...(options.shardBytes !== undefined ? { shardBytes: options.shardBytes } : {}),
    ...(options.onProgress ? { onProgress: (n: number) => options.onProgress!(n, totalBytes) } : {}),
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
  const source = await openModel(path);
  const { read: _read, ...header } = source;
  return { ...header, weights: await readAllWeights(source) };
}

/**
 * Opens a model by path for reading tensor by tensor (positional reads, f32
 * on read): a directory is a Hugging Face folder ({@link openHfModel}), a
 * file a llama2.c checkpoint (`openCheckpoint`). Headers are validated here.
 * @throws CheckpointError naming the file when it is missing or bad.
 */
export async function openModel(path: string): Promise<ModelSource> {
  return (await isDirectory(path)) ? openHfModel(path) : openCheckpoint(path);
}

/**
 * Reads a model's header by path, dispatching as {@link loadModel}.
 * @throws CheckpointError naming the file when it is missing or bad.
 */
export async function readModelHeader(path: string): Promise<CheckpointHeader> {
  return (await isDirectory(path)) ? readHfModelHeader(path) : readCheckpointHeader(path);
}
