import { copyFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  formatBytes,
  llama2cToHfTokenizer,
  loadModel,
  loadModelTokenizer,
  readModelHeader,
  writeHfModel,
  type HfDtype,
  llamaHiddenDim,
  parameterCount,
  readCheckpointHeader,
  synthesizeWeights,
  writeCheckpoint,
  type ModelShape,
} from "@tessera/core";

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
  format: "v1" | "legacy";
}

/** `tessera model synth`: writes a llama2.c checkpoint of any shape from a seed. */
export async function synthCommand(f: SynthFlags): Promise<void> {
  const nKvHeads = f.kvHeads ?? f.heads;
  if (f.dim % f.heads !== 0) throw new Error(`--dim ${f.dim} must be a multiple of --heads ${f.heads}`);
  if (f.heads % nKvHeads !== 0) throw new Error(`--heads ${f.heads} must be a multiple of --kv-heads ${nKvHeads}`);
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
  const weights = synthesizeWeights(shape, f.seed);
  await writeCheckpoint(f.out, shape, weights, { format: f.format === "legacy" ? "llama2c-legacy" : "llama2c-v1" });
  const header = await readCheckpointHeader(f.out);
  process.stderr.write(
    `wrote ${f.out}: ${describe(header.shape, header.sharedClassifier)}, ${formatBytes(header.expectedBytes)} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );
}

function describe(s: ModelShape, shared: boolean): string {
  const params = parameterCount(s, shared);
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
  const ckpt = await loadModel(f.model);
  const files = await writeHfModel(f.out, ckpt.shape, ckpt.weights, {
    dtype: f.dtype,
    sharedClassifier: ckpt.sharedClassifier,
  });
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
  const params = parameterCount(h.shape, h.sharedClassifier);
  if (json) {
    process.stdout.write(
      JSON.stringify(
        {
          path,
          format: h.format,
          shape: h.shape,
          sharedClassifier: h.sharedClassifier,
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
      `  shape       ${describe(h.shape, h.sharedClassifier)}`,
      `  size        ${formatBytes(h.expectedBytes)} (${h.expectedBytes} bytes, ${dtype})`,
    ].join("\n") + "\n",
  );
}
