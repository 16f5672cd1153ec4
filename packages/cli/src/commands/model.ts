import {
  formatBytes,
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

/** `tessera model info`: prints a checkpoint's format, shape, parameters and bytes. */
export async function infoCommand(path: string, json: boolean): Promise<void> {
  const h = await readCheckpointHeader(path);
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
      `  size        ${formatBytes(h.expectedBytes)} (${h.expectedBytes} bytes, f32)`,
    ].join("\n") + "\n",
  );
}
