import { copyFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import cliProgress from "cli-progress";
import { formatBytes, parameterCount, type ModelShape } from "@tessera/core";
import {
  llama2cToHfTokenizer,
  loadModelTokenizer,
  openModel,
  readModelHeader,
  writeHfModel,
  type HfDtype,
  llamaHiddenDim,
  synthReader,
  writeCheckpoint,
} from "@tessera/model";

/** Flags of `tessera model synth`. */
export interface SynthFlags {
  out: string;
  dim: number;
  hidden?: number;
  layers: number;
  heads: number;
  kvHeads?: number;
  vocab: number;
  seqLen: number;
  seed: number;
  /** "v1" and "legacy" are the older names of "llama2c" and "llama2c-legacy". */
  format: "llama2c" | "llama2c-legacy" | "hf" | "v1" | "legacy";
  dtype?: HfDtype;
  arch?: "llama" | "qwen2";
  qkvBias?: boolean;
  separateClassifier?: boolean;
  quiet?: boolean;
}

/**
 * A byte-progress bar on stderr for long writes (a line every few seconds
 * when stderr is not a terminal); `update(done, total)`, then `stop()`.
 */
function byteProgress(quiet: boolean, what: string): { update(done: number, total: number): void; stop(): void } {
  if (quiet) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${what} {bar} {percentage}% | {done} of {all} | {duration_formatted}`,
      noTTYOutput: true,
      notTTYSchedule: 5000,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      const payload = { done: formatBytes(done), all: formatBytes(total) };
      if (!started) {
        bar.start(total, done, payload);
        started = true;
      } else bar.update(done, payload);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

/**
 * `tessera model synth`: writes a model of any Llama shape from a seed, as a
 * llama2.c file or a Hugging Face folder, one tensor at a time (memory holds
 * the largest tensor, not the model).
 * @throws Error for an inconsistent shape or flag combination.
 */
export async function synthCommand(f: SynthFlags): Promise<void> {
  const nKvHeads = f.kvHeads ?? f.heads;
  if (f.dim % f.heads !== 0) throw new Error(`--dim ${f.dim} must be a multiple of --heads ${f.heads}`);
  if (f.heads % nKvHeads !== 0) throw new Error(`--heads ${f.heads} must be a multiple of --kv-heads ${nKvHeads}`);
  if ((f.dim / f.heads) % 2 !== 0)
    throw new Error(`head_dim ${f.dim / f.heads} (--dim / --heads) must be even for RoPE`);
  const format = f.format === "v1" ? "llama2c" : f.format === "legacy" ? "llama2c-legacy" : f.format;
  const qkvBias = f.qkvBias === true || f.arch === "qwen2";
  if (format !== "hf" && qkvBias)
    throw new Error("--arch qwen2 / --qkv-bias needs --format hf (llama2.c files have no biases)");
  if (format !== "hf" && f.dtype !== undefined && f.dtype !== "f32")
    throw new Error(`--dtype ${f.dtype} needs --format hf (llama2.c files are f32)`);
  const shape: ModelShape = {
    dim: f.dim,
    hiddenDim: f.hidden ?? llamaHiddenDim(f.dim),
    nLayers: f.layers,
    nHeads: f.heads,
    nKvHeads,
    vocabSize: f.vocab,
    seqLen: f.seqLen,
    headDim: f.dim / f.heads,
    ropeTheta: 10000,
    normEps: 1e-5,
  };
  const t0 = performance.now();
  const shared = !(f.separateClassifier ?? false);
  const reader = synthReader(shape, f.seed, { qkvBias, separateClassifier: !shared });
  const progress = byteProgress(f.quiet ?? false, `writing ${f.out}`);
  try {
    if (format === "hf") {
      await writeHfModel(f.out, shape, reader, {
        dtype: f.dtype ?? "f32",
        sharedClassifier: shared,
        qkvBias,
        onProgress: (done, total) => progress.update(done, total),
      });
    } else {
      await writeCheckpoint(f.out, shape, reader, {
        format: format === "llama2c-legacy" ? "llama2c-legacy" : "llama2c-v1",
        sharedClassifier: shared,
        onProgress: (done, total) => progress.update(done, total),
      });
    }
  } finally {
    progress.stop();
  }
  const header = await readModelHeader(f.out);
  const dtype = "dtype" in header ? String(header.dtype).toLowerCase() : "f32";
  process.stderr.write(
    `wrote ${f.out}: ${describe(header.shape, header.sharedClassifier, qkvBias)}${qkvBias ? ", q/k/v biases" : ""}, ${dtype}, ${formatBytes(header.expectedBytes)} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );
}

function describe(s: ModelShape, shared: boolean, qkvBias = false): string {
  const params = parameterCount(s, shared, qkvBias);
  return (
    `dim ${s.dim}, hidden ${s.hiddenDim}, ${s.nLayers} layers, ${s.nHeads} heads, ${s.nKvHeads} KV heads, ` +
    `head_dim ${s.headDim}, vocab ${s.vocabSize}, context ${s.seqLen}, ${(params / 1e6).toFixed(2)}M parameters`
  );
}

/** Flags of `tessera model export-hf`. */
export interface ExportHfFlags {
  model: string;
  tokenizer?: string;
  out: string;
  dtype: HfDtype;
}

/**
 * `tessera model export-hf`: writes a model as a Hugging Face Llama folder
 * (q/k rows permuted to HF's rotary layout) and, with --tokenizer, its
 * tokenizer.json + tokenizer_config.json (a llama2.c tokenizer.bin is converted).
 */
export async function exportHfCommand(f: ExportHfFlags): Promise<void> {
  const t0 = performance.now();
  // Streams tensor by tensor from the source file: memory holds one tensor.
  const ckpt = await openModel(f.model);
  const progress = byteProgress(false, `writing ${f.out}`);
  let files: string[];
  try {
    files = await writeHfModel(f.out, ckpt.shape, ckpt, {
      dtype: f.dtype,
      sharedClassifier: ckpt.sharedClassifier,
      qkvBias: ckpt.qkvBias ?? false,
      onProgress: (done, total) => progress.update(done, total),
    });
  } finally {
    progress.stop();
  }
  if (f.tokenizer !== undefined) {
    // Loading checks the tokenizer fits the model; a tokenizer.json is copied as it is.
    const tok = await loadModelTokenizer(f.tokenizer, ckpt.shape.vocabSize);
    if (f.tokenizer.endsWith(".json")) {
      await copyFile(f.tokenizer, join(f.out, "tokenizer.json"));
      files.push("tokenizer.json");
    } else {
      const { tokenizer, config } = llama2cToHfTokenizer(tok);
      await writeFile(join(f.out, "tokenizer.json"), JSON.stringify(tokenizer, null, 2) + "\n");
      await writeFile(join(f.out, "tokenizer_config.json"), JSON.stringify(config, null, 2) + "\n");
      files.push("tokenizer.json", "tokenizer_config.json");
    }
  }
  process.stderr.write(
    `wrote ${f.out} (${files.join(", ")}): ${describe(ckpt.shape, ckpt.sharedClassifier)}, ${f.dtype}, in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );
}

/** `tessera model info`: prints a checkpoint's (or HF folder's) format, shape, parameters and bytes. */
export async function infoCommand(path: string, json: boolean): Promise<void> {
  const h = await readModelHeader(path);
  const dtype = "dtype" in h ? String(h.dtype).toLowerCase() : "f32";
  const qkvBias = h.qkvBias ?? false;
  const params = parameterCount(h.shape, h.sharedClassifier, qkvBias);
  if (json) {
    process.stdout.write(
      JSON.stringify(
        {
          path,
          format: h.format,
          shape: h.shape,
          sharedClassifier: h.sharedClassifier,
          qkvBias,
          parameters: params,
          bytes: h.expectedBytes,
          dtype,
        },
        null,
        2,
      ) + "\n",
    );
    return;
  }
  process.stdout.write(
    [
      `${path}`,
      `  format      ${h.format}${h.sharedClassifier ? " (shared classifier)" : " (separate classifier)"}`,
      `  shape       ${describe(h.shape, h.sharedClassifier, qkvBias)}${qkvBias ? " (q/k/v biases, Qwen2 layout)" : ""}`,
      `  size        ${formatBytes(h.expectedBytes)} (${h.expectedBytes} bytes, ${dtype})`,
    ].join("\n") + "\n",
  );
}
