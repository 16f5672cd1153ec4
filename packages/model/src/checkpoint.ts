/**
 * llama2.c checkpoints: the legacy header (7 int32) written by llama2.c's
 * `export.py legacy_export`, and the version-1 header (magic 0x616b3432
 * "ak42", version 1, 7 int32, shared-classifier byte, padded to 256 bytes)
 * written by `version1_export`. Weights are float32, little-endian, in the
 * order of those exporters; `run.c`'s `memory_map_weights` reads the legacy
 * order. Matrices are stored [out_features, in_features] row-major.
 */
import { open, stat } from "node:fs/promises";
import { CheckpointError, type ModelShape } from "@tessera/core";
import { MODEL_LIMITS } from "./model-limits.js";
import { readFully, type SafetensorsDtype } from "./safetensors.js";

/** Magic of the version-1 header ("ak42" little-endian). */
export const LLAMA2C_V1_MAGIC = 0x616b3432;
/** Size of the version-1 header in bytes. */
export const LLAMA2C_V1_HEADER_BYTES = 256;
/** Size of the legacy header in bytes (7 int32). */
export const LLAMA2C_LEGACY_HEADER_BYTES = 28;

/**
 * The checkpoint layouts Tessera reads and writes; "hf" is a Hugging Face
 * folder (config.json + safetensors), read and written by hf-model.ts.
 */
export type CheckpointFormat = "llama2c-legacy" | "llama2c-v1" | "hf";

/** Weights of one transformer layer; f32, matrices [out, in] row-major. */
export interface LayerWeights {
  /** [dim] RMSNorm weight before attention. */
  rmsAtt: Float32Array;
  /** [n_heads * head_dim, dim] */
  wq: Float32Array;
  /** [n_kv_heads * head_dim, dim] */
  wk: Float32Array;
  /** [n_kv_heads * head_dim, dim] */
  wv: Float32Array;
  /** [dim, n_heads * head_dim] */
  wo: Float32Array;
  /** [dim] RMSNorm weight before the FFN. */
  rmsFfn: Float32Array;
  /** [hidden_dim, dim] gate projection. */
  w1: Float32Array;
  /** [dim, hidden_dim] down projection. */
  w2: Float32Array;
  /** [hidden_dim, dim] up projection. */
  w3: Float32Array;
  /** [n_heads * head_dim] q projection bias (Qwen2 layout); absent in Llama/Mistral. */
  bq?: Float32Array;
  /** [n_kv_heads * head_dim] k projection bias (Qwen2 layout). */
  bk?: Float32Array;
  /** [n_kv_heads * head_dim] v projection bias (Qwen2 layout). */
  bv?: Float32Array;
}

/** Names of the per-layer weights ({@link LayerWeights} keys). */
export type LayerWeightName = keyof LayerWeights;

/** Names of every weight: per-layer ones (with a layer index) and the model-level ones. */
export type WeightName = LayerWeightName | "tokenEmbedding" | "rmsFinal" | "classifier";

/** The per-layer weight names, matrices first, biases last. */
export const LAYER_WEIGHT_NAMES: readonly LayerWeightName[] = [
  "rmsAtt",
  "wq",
  "wk",
  "wv",
  "wo",
  "rmsFfn",
  "w1",
  "w2",
  "w3",
  "bq",
  "bk",
  "bv",
];

/**
 * Dimensions of weight `name` for `shape`: matrices [out_features,
 * in_features] as stored, vectors [n].
 */
export function weightDims(shape: ModelShape, name: WeightName): number[] {
  const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = shape;
  const q = nHeads * headDim;
  const kv = nKvHeads * headDim;
  switch (name) {
    case "tokenEmbedding":
    case "classifier":
      return [vocabSize, dim];
    case "rmsAtt":
    case "rmsFfn":
    case "rmsFinal":
      return [dim];
    case "wq":
      return [q, dim];
    case "wk":
    case "wv":
      return [kv, dim];
    case "wo":
      return [dim, q];
    case "w1":
    case "w3":
      return [hiddenDim, dim];
    case "w2":
      return [dim, hiddenDim];
    case "bq":
      return [q];
    case "bk":
    case "bv":
      return [kv];
  }
}

/**
 * Reads a model's weights one tensor at a time, as new f32 arrays (or, for
 * an in-memory model, its own arrays: callers must not modify them).
 * `layer` is required for per-layer names. For a shared classifier,
 * "classifier" reads the token embedding.
 */
export interface WeightReader {
  read(name: WeightName, layer?: number): Promise<Float32Array> | Float32Array;
}

/**
 * A model opened for reading tensor by tensor: its header and a
 * {@link WeightReader} (positional reads from the file, converted to f32 one
 * tensor at a time), so a consumer that needs a layer range holds only that.
 */
export interface ModelSource extends CheckpointHeader, WeightReader {
  read(name: WeightName, layer?: number): Promise<Float32Array>;
}

/** All weights of a Llama-architecture model, f32. */
export interface LlamaWeights {
  /** [vocab_size, dim] */
  tokenEmbedding: Float32Array;
  layers: LayerWeights[];
  /** [dim] final RMSNorm weight. */
  rmsFinal: Float32Array;
  /** [vocab_size, dim]; the same array as tokenEmbedding when shared. */
  classifier: Float32Array;
}

/** What a checkpoint's header says, and the file size it implies. */
export interface CheckpointHeader {
  path: string;
  format: CheckpointFormat;
  shape: ModelShape;
  sharedClassifier: boolean;
  headerBytes: number;
  /** Exact file size in bytes the header implies. */
  expectedBytes: number;
  /** Whether layers have q/k/v projection biases (Qwen2 layout; never in llama2.c files). */
  qkvBias?: boolean;
  /** Element type the weights are stored in (of the embedding, for HF folders); absent means F32. */
  dtype?: SafetensorsDtype;
}

/** A loaded checkpoint. */
export interface Checkpoint extends CheckpointHeader {
  weights: LlamaWeights;
}

const LLAMA2C_ROPE_THETA = 10000;
const LLAMA2C_NORM_EPS = 1e-5;

/** The f32 tensors of a checkpoint in file order, with their element counts. */
function weightLayout(h: Omit<CheckpointHeader, "expectedBytes">): { name: string; layer?: number; size: number }[] {
  const { dim, hiddenDim, nLayers, nHeads, headDim, vocabSize, seqLen } = h.shape;
  const kv = h.shape.nKvHeads * headDim;
  const q = nHeads * headDim;
  const perLayer = (name: string, size: number) =>
    Array.from({ length: nLayers }, (_, layer) => ({ name, layer, size }));
  const out: { name: string; layer?: number; size: number }[] = [];
  if (h.format === "llama2c-legacy") {
    out.push({ name: "tokenEmbedding", size: vocabSize * dim });
    out.push(...perLayer("rmsAtt", dim), ...perLayer("wq", q * dim), ...perLayer("wk", kv * dim));
    out.push(...perLayer("wv", kv * dim), ...perLayer("wo", dim * q), ...perLayer("rmsFfn", dim));
    out.push(
      ...perLayer("w1", hiddenDim * dim),
      ...perLayer("w2", dim * hiddenDim),
      ...perLayer("w3", hiddenDim * dim),
    );
    out.push({ name: "rmsFinal", size: dim });
    // freq_cis_real and freq_cis_imag: [seq_len, head_dim / 2] each, unused (RoPE is recomputed).
    out.push({ name: "freqCis", size: seqLen * headDim });
  } else {
    out.push(...perLayer("rmsAtt", dim), ...perLayer("rmsFfn", dim), { name: "rmsFinal", size: dim });
    out.push({ name: "tokenEmbedding", size: vocabSize * dim });
    out.push(...perLayer("wq", q * dim), ...perLayer("wk", kv * dim), ...perLayer("wv", kv * dim));
    out.push(...perLayer("wo", dim * q));
    out.push(
      ...perLayer("w1", hiddenDim * dim),
      ...perLayer("w2", dim * hiddenDim),
      ...perLayer("w3", hiddenDim * dim),
    );
  }
  if (!h.sharedClassifier) out.push({ name: "classifier", size: vocabSize * dim });
  return out;
}

function parseHeader(path: string, buf: Buffer, fileBytes: number): CheckpointHeader {
  if (fileBytes < LLAMA2C_LEGACY_HEADER_BYTES) {
    throw new CheckpointError(path, "too small for a llama2.c header", LLAMA2C_LEGACY_HEADER_BYTES, fileBytes);
  }
  let format: CheckpointFormat;
  let ints: number[];
  let sharedClassifier: boolean;
  let headerBytes: number;
  // Formats Tessera does not read are refused by name, not parsed as a legacy header.
  if (buf.toString("latin1", 0, 4) === "GGUF") {
    throw new CheckpointError(
      path,
      "is a GGUF file, which is not supported: Tessera reads llama2.c checkpoints and Hugging Face folders (config.json + safetensors)",
    );
  }
  if (buf.readUInt32LE(0) === LLAMA2C_V1_MAGIC) {
    if (fileBytes < LLAMA2C_V1_HEADER_BYTES) {
      throw new CheckpointError(path, "too small for a version-1 header", LLAMA2C_V1_HEADER_BYTES, fileBytes);
    }
    const version = buf.readInt32LE(4);
    if (version !== 1) {
      throw new CheckpointError(
        path,
        `unsupported llama2.c checkpoint version ${version} (only 1 and legacy are read)`,
      );
    }
    format = "llama2c-v1";
    ints = Array.from({ length: 7 }, (_, i) => buf.readInt32LE(8 + 4 * i));
    sharedClassifier = buf.readUInt8(36) !== 0;
    headerBytes = LLAMA2C_V1_HEADER_BYTES;
  } else {
    format = "llama2c-legacy";
    ints = Array.from({ length: 7 }, (_, i) => buf.readInt32LE(4 * i));
    sharedClassifier = ints[5]! > 0;
    ints[5] = Math.abs(ints[5]!);
    headerBytes = LLAMA2C_LEGACY_HEADER_BYTES;
  }
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen] = ints as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
  ints.forEach((v, i) => {
    if (!(v > 0 && v <= MODEL_LIMITS.maxDimension))
      throw new CheckpointError(
        path,
        `header field ${names[i]} = ${v} is not a plausible size; not a llama2.c checkpoint?`,
      );
  });
  if (seqLen > MODEL_LIMITS.maxSeqLen) {
    throw new CheckpointError(path, `header field seq_len = ${seqLen} exceeds the maximum ${MODEL_LIMITS.maxSeqLen}`);
  }
  if (dim % nHeads !== 0) throw new CheckpointError(path, `dim ${dim} is not a multiple of n_heads ${nHeads}`);
  if (nHeads % nKvHeads !== 0)
    throw new CheckpointError(path, `n_heads ${nHeads} is not a multiple of n_kv_heads ${nKvHeads}`);
  if ((dim / nHeads) % 2 !== 0)
    throw new CheckpointError(path, `head_dim ${dim / nHeads} (dim / n_heads) is odd; rotary needs pairs`);
  const shape: ModelShape = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize,
    seqLen,
    headDim: dim / nHeads,
    ropeTheta: LLAMA2C_ROPE_THETA,
    normEps: LLAMA2C_NORM_EPS,
  };
  const partial = { path, format, shape, sharedClassifier, headerBytes };
  const expectedBytes = headerBytes + 4 * weightValues(partial);
  if (expectedBytes !== fileBytes) {
    // Before any per-layer table is built: the fields are bounded by the file's own size.
    throw new CheckpointError(path, `size does not match its ${format} header`, expectedBytes, fileBytes);
  }
  return { ...partial, expectedBytes };
}

/** Number of f32 values the tensors of {@link weightLayout} hold, computed without listing them. */
function weightValues(h: Omit<CheckpointHeader, "expectedBytes">): number {
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize, seqLen } = h.shape;
  const perLayer = 2 * dim + 2 * nHeads * headDim * dim + 2 * nKvHeads * headDim * dim + 3 * hiddenDim * dim;
  const freqCis = h.format === "llama2c-legacy" ? seqLen * headDim : 0;
  return vocabSize * dim * (h.sharedClassifier ? 1 : 2) + nLayers * perLayer + dim + freqCis;
}

/**
 * Reads and validates a checkpoint's header without loading weights.
 * Every header field is bounded (positive, at most `MODEL_LIMITS.maxDimension`,
 * seq_len at most `MODEL_LIMITS.maxSeqLen`) and the tensors it implies must
 * fill the file exactly, before anything is allocated from it.
 * @throws CheckpointError naming the file when it is missing, not a llama2.c
 *   checkpoint, a field is out of bounds (naming the field), or its size does
 *   not match the header (expected vs found).
 */
export async function readCheckpointHeader(path: string): Promise<CheckpointHeader> {
  let fileBytes: number;
  try {
    fileBytes = (await stat(path)).size;
  } catch (err) {
    throw new CheckpointError(path, `cannot read checkpoint: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
  }
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(LLAMA2C_V1_HEADER_BYTES);
    await fh.read(buf, 0, buf.length, 0);
    return parseHeader(path, buf, fileBytes);
  } finally {
    await fh.close();
  }
}

/**
 * Opens a llama2.c checkpoint (legacy or version 1) for reading tensor by
 * tensor with positional reads (no whole-file buffer, so files over 2 GiB
 * open too). Each `read` opens the file, reads one tensor and closes it.
 * @throws CheckpointError as {@link readCheckpointHeader}; `read` throws it
 *   when the file was truncated since, and RangeError for a weight the file
 *   has not (biases) or a layer out of range.
 */
export async function openCheckpoint(path: string): Promise<ModelSource> {
  const header = await readCheckpointHeader(path);
  const offsets = new Map<string, { offset: number; size: number }>();
  let offset = header.headerBytes;
  for (const t of weightLayout(header)) {
    offsets.set(t.layer === undefined ? t.name : `${t.name}.${t.layer}`, { offset, size: t.size });
    offset += 4 * t.size;
  }
  return {
    ...header,
    async read(name: WeightName, layer?: number): Promise<Float32Array> {
      const key =
        name === "classifier" && header.sharedClassifier
          ? "tokenEmbedding"
          : layer === undefined
            ? name
            : `${name}.${layer}`;
      const at = offsets.get(key);
      if (!at) throw new RangeError(`${path}: no weight ${name}${layer === undefined ? "" : ` of layer ${layer}`}`);
      const out = new Float32Array(at.size);
      const fh = await open(path, "r");
      try {
        await readFully(fh, path, new Uint8Array(out.buffer), at.offset, `weight ${key}`);
      } finally {
        await fh.close();
      }
      return out;
    },
  };
}

/** A {@link WeightReader} over in-memory weights (returns the arrays themselves, no copies). */
export function weightsReader(weights: LlamaWeights): WeightReader {
  return {
    read(name: WeightName, layer?: number): Float32Array {
      let w: Float32Array | undefined;
      if (name === "tokenEmbedding" || name === "rmsFinal" || name === "classifier") w = weights[name];
      else w = layer === undefined ? undefined : weights.layers[layer]?.[name];
      if (!w) throw new RangeError(`no weight ${name}${layer === undefined ? "" : ` of layer ${layer}`}`);
      return w;
    },
  };
}

/** A {@link ModelSource} over a loaded checkpoint (its own arrays, no copies). */
export function checkpointSource(checkpoint: Checkpoint): ModelSource {
  const { weights, ...header } = checkpoint;
  const reader = weightsReader(weights);
  return {
    ...header,
    qkvBias: header.qkvBias ?? weights.layers.some((l) => l.bq || l.bk || l.bv),
    read: (name, layer) => Promise.resolve(reader.read(name, layer)),
  };
}

/**
 * Reads the weights of layer `layer` (biases when `qkvBias`).
 * @throws as `reader.read`.
 */
async function readLayer(reader: WeightReader, layer: number, qkvBias = false): Promise<LayerWeights> {
  const w: Partial<Record<LayerWeightName, Float32Array>> = {};
  for (const name of LAYER_WEIGHT_NAMES) {
    if (!qkvBias && (name === "bq" || name === "bk" || name === "bv")) continue;
    w[name] = await reader.read(name, layer);
  }
  return w as LayerWeights;
}

/**
 * Reads every weight of `source` into memory (f32); a shared classifier is
 * the embedding array itself.
 * @throws as `source.read`.
 */
export async function readAllWeights(source: ModelSource): Promise<LlamaWeights> {
  const tokenEmbedding = await source.read("tokenEmbedding");
  const layers: LayerWeights[] = [];
  for (let l = 0; l < source.shape.nLayers; l++) layers.push(await readLayer(source, l, source.qkvBias ?? false));
  const rmsFinal = await source.read("rmsFinal");
  const classifier = source.sharedClassifier ? tokenEmbedding : await source.read("classifier");
  return { tokenEmbedding, layers, rmsFinal, classifier };
}

/**
 * Loads a llama2.c checkpoint (legacy or version 1) into f32 arrays, one
 * positional read per tensor (files over 2 GiB load too).
 * @throws CheckpointError as {@link readCheckpointHeader}.
 */
export async function loadCheckpoint(path: string): Promise<Checkpoint> {
  const source = await openCheckpoint(path);
  const { read: _read, ...header } = source;
  return { ...header, weights: await readAllWeights(source) };
}

/** Options of {@link writeCheckpoint}. */
export interface WriteCheckpointOptions {
  /** @default "llama2c-v1" */
  format?: CheckpointFormat;
  /** Write no classifier (it is the embedding). @default weights.classifier === weights.tokenEmbedding, or false for a reader */
  sharedClassifier?: boolean;
  /** Called after each tensor with the bytes written so far and the file's total. */
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
}

/**
 * Writes a checkpoint in `format` (version 1 by default), one tensor at a
 * time: `weights` may be a {@link WeightReader} (e.g. a synthetic model or an
 * opened file), read in file order, so memory holds one tensor. The legacy
 * format gets RoPE frequency tables as llama2.c's exporter wrote them.
 * @throws RangeError when a weight's length does not match `shape`, for
 *   format "hf", or for weights with q/k/v biases (llama2.c has none).
 */
export async function writeCheckpoint(
  path: string,
  shape: ModelShape,
  weights: LlamaWeights | WeightReader,
  options: WriteCheckpointOptions = {},
): Promise<void> {
  const format = options.format ?? "llama2c-v1";
  if (format === "hf") throw new RangeError('writeCheckpoint writes llama2.c files; use writeHfModel for format "hf"');
  const inMemory = !("read" in weights);
  if (inMemory && weights.layers.some((l) => l.bq || l.bk || l.bv))
    throw new RangeError("llama2.c checkpoints have no q/k/v biases; write a Hugging Face folder instead");
  const reader = inMemory ? weightsReader(weights) : weights;
  const sharedClassifier =
    options.sharedClassifier ?? (inMemory ? weights.classifier === weights.tokenEmbedding : false);
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen, headDim } = shape;
  let header: Buffer;
  if (format === "llama2c-v1") {
    header = Buffer.alloc(LLAMA2C_V1_HEADER_BYTES);
    header.writeUInt32LE(LLAMA2C_V1_MAGIC, 0);
    header.writeInt32LE(1, 4);
    [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen].forEach((v, i) => header.writeInt32LE(v, 8 + 4 * i));
    header.writeUInt8(sharedClassifier ? 1 : 0, 36);
  } else {
    header = Buffer.alloc(LLAMA2C_LEGACY_HEADER_BYTES);
    [dim, hiddenDim, nLayers, nHeads, nKvHeads, sharedClassifier ? vocabSize : -vocabSize, seqLen].forEach((v, i) =>
      header.writeInt32LE(v, 4 * i),
    );
  }
  const layout = weightLayout({ path, format, shape, sharedClassifier, headerBytes: header.length });
  const totalBytes = header.length + 4 * layout.reduce((a, t) => a + t.size, 0);
  const fh = await open(path, "w");
  try {
    await fh.write(header);
    let written = header.length;
    for (const t of layout) {
      const data =
        t.name === "freqCis"
          ? ropeTables(seqLen, headDim, shape.ropeTheta)
          : await reader.read(t.name as WeightName, t.layer);
      if (!data || data.length !== t.size) {
        throw new RangeError(
          `${t.name}${t.layer !== undefined ? `[${t.layer}]` : ""}: expected ${t.size} values, got ${data?.length}`,
        );
      }
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      for (let at = 0; at < bytes.byteLength;) {
        const { bytesWritten } = await fh.write(bytes, at, Math.min(1 << 30, bytes.byteLength - at));
        at += bytesWritten;
      }
      written += bytes.byteLength;
      options.onProgress?.(written, totalBytes);
    }
  } finally {
    await fh.close();
  }
}

/** cos table then sin table, each [seq_len, head_dim / 2], as llama2.c's legacy export. */
function ropeTables(seqLen: number, headDim: number, theta: number): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(seqLen * headDim);
  for (let p = 0; p < seqLen; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p / Math.pow(theta, (2 * i) / headDim);
      out[p * half + i] = Math.cos(angle);
      out[seqLen * half + p * half + i] = Math.sin(angle);
    }
  }
  return out;
}
