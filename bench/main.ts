/**
 * `npm run bench`: decode tokens/s of the local cluster (coordinator,
 * gpu-node, memory-node as child processes over loopback gRPC) against the
 * in-process reference forward pass (plain TypeScript loops) on the same
 * shapes, as a ratio measured in the same run, with where the cluster's
 * decode step time goes (dense compute, attention compute, attention wire,
 * coordinator). Shapes: stories260K, and a checkpoint generated from a seed
 * by `tessera model synth` (dim 1024, 8 layers, 16 heads, 8 KV heads).
 *
 * Environment: BENCH_QUICK=1 runs fewer tokens (a smoke run).
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { KvPlacement, type Summary } from "@tessera/proto";
import { ReferenceModel, loadCheckpoint, loadTokenizer } from "@tessera/core";
import { bundled, cliEntry } from "@tessera/cli";
import { generate, startTestCluster, tempDir } from "@tessera/testing";
import { runAttentionBench } from "./attention.js";

interface Case {
  name: string;
  model: string;
  tokenizer: string;
  /** Tokens generated per prompt in the cluster run. */
  decodeTokens: number;
  /** Decode steps per sequence timed on the reference. */
  referenceSteps: number;
}

const quick = process.env["BENCH_QUICK"] === "1";
const BATCHES = [1, 16];
const PROMPTS = ["Once upon a time", "Sam found a shiny stone", "The little girl wanted", "One sunny morning, Max"];

/** Decode tokens/s of the reference model: `batch` sequences, each prefilled with its prompt, then `steps` decode steps each (only decode is timed). */
function referenceDecode(model: ReferenceModel, prompts: number[][], steps: number): number {
  const states = prompts.map(() => model.createState());
  const next = prompts.map((ids, i) => {
    let logits!: Float32Array;
    ids.forEach((t, pos) => (logits = model.forward(states[i]!, t, pos)));
    return argmax(logits);
  });
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < prompts.length; i++) {
      next[i] = argmax(model.forward(states[i]!, next[i]!, prompts[i]!.length + s));
    }
  }
  return (prompts.length * steps) / ((performance.now() - t0) / 1000);
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

function breakdown(s: Summary): string {
  const b = s.decodeBreakdown;
  if (!b || b.steps === 0) return "";
  const pct = (x: number) => `${((100 * x) / b.stepSeconds).toFixed(0)}%`.padStart(4);
  return (
    `${((1000 * b.stepSeconds) / b.steps).toFixed(2).padStart(8)} ms/step: dense ${pct(b.denseSeconds)}` +
    `  attention ${pct(b.attentionComputeSeconds)}  wire ${pct(b.attentionWireSeconds)}  coordinator ${pct(b.coordinatorSeconds)}`
  );
}

async function benchCase(c: Case): Promise<void> {
  const checkpoint = await loadCheckpoint(c.model);
  const tokenizer = await loadTokenizer(c.tokenizer, checkpoint.shape.vocabSize);
  const reference = new ReferenceModel(checkpoint);
  const cluster = await startTestCluster({ model: c.model, tokenizer: c.tokenizer });
  try {
    // Warm-up: loads the model on the gpu-node and the onnxruntime sessions.
    await generate(cluster.address, { prompts: [{ id: "warm", prompt: "Hi" }], sampling: { maxTokens: 2 } });
    for (const batch of BATCHES) {
      const prompts = Array.from({ length: batch }, (_, i) => PROMPTS[i % PROMPTS.length]!);
      const out = await generate(cluster.address, {
        prompts: prompts.map((prompt, i) => ({ id: `p${i}`, prompt })),
        sampling: { temperature: 0, maxTokens: c.decodeTokens },
        kv: KvPlacement.MEMORY,
      });
      const s = out.summary!;
      const ids = prompts.map((p) => tokenizer.encode(p, { bos: true, eos: false }));
      const ref = referenceDecode(reference, ids, c.referenceSteps);
      const cl = s.decodeTokensPerSecond;
      console.log(
        `${c.name.padEnd(22)} batch ${String(batch).padStart(2)}  cluster ${cl.toFixed(1).padStart(8)} tok/s  ` +
          `reference ${ref.toFixed(1).padStart(8)} tok/s  ratio ${(cl / ref).toFixed(2).padStart(6)}x  |${breakdown(s)}`,
      );
    }
  } finally {
    await cluster.stop();
  }
}

async function main(): Promise<void> {
  const dir = await tempDir("tessera-bench-");
  try {
    const synthPath = join(dir.path, "synth-1024.bin");
    const synth = spawnSync(
      process.execPath,
      [
        cliEntry,
        "model",
        "synth",
        "--out",
        synthPath,
        "--dim",
        "1024",
        "--layers",
        "8",
        "--heads",
        "16",
        "--kv-heads",
        "8",
        "--vocab",
        "32000",
        "--seq-len",
        "1024",
        "--seed",
        "7",
      ],
      { stdio: ["ignore", "inherit", "inherit"] },
    );
    if (synth.status !== 0) throw new Error("tessera model synth failed");
    console.log(
      "decode tokens/s, local cluster (1 gpu-node, 1 memory-node, loopback gRPC) vs in-process reference (plain TS loops), greedy",
    );
    await benchCase({
      name: "stories260K",
      model: bundled.model,
      tokenizer: bundled.tokenizer,
      decodeTokens: quick ? 32 : 200,
      referenceSteps: quick ? 32 : 200,
    });
    await benchCase({
      name: "synth d1024 L8 H16 KV8",
      model: synthPath,
      tokenizer: join(bundled.model, "../tokenizer.bin"),
      decodeTokens: quick ? 4 : 24,
      referenceSteps: quick ? 1 : 3,
    });
  } finally {
    await dir.remove();
  }
}

await main();
runAttentionBench();
