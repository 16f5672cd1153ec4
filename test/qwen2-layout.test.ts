/**
 * Issue 3, item 1 (Qwen2 layout): a synthetic Hugging Face folder with q/k/v
 * projection biases (`tessera model synth --arch qwen2`, config.json
 * model_type "qwen2") generates, through a real in-process cluster
 * (gpu-node ONNX graphs with the fused bias Add, memory-node attention over
 * gRPC, f32 activations on the wire), exactly the greedy tokens of the
 * plain-TypeScript reference model, which adds the biases itself; and the
 * biases matter: without them the reference picks other tokens.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { ReferenceModel, loadModel, loadTokenizer, type Tokenizer } from "@tessera/model";
import { bundled, generate, startInProcessCluster, tempDir } from "@tessera/testing";
import { runCli } from "./helpers.js";

const PROMPTS = ["Once upon a time", "Sam found a shiny stone", "The little girl wanted", "One sunny morning, Max"];
const MAX_TOKENS = 24;
/** Smallest top-2 logit gap accepted at a reference step: below it, f32 summation order could pick the other token. */
const MIN_MARGIN = 1e-3;

/** Greedy generation with the reference model; stops at BOS/EOS or maxTokens. Records each step's top-2 gap. */
function referenceGreedy(model: ReferenceModel, tok: Tokenizer, prompt: number[], margins: number[]): number[] {
  const state = model.createState();
  let logits!: Float32Array;
  prompt.forEach((t, pos) => (logits = model.forward(state, t, pos)));
  const out: number[] = [];
  for (let pos = prompt.length; ; pos++) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    let second = -Infinity;
    for (let i = 0; i < logits.length; i++) if (i !== best) second = Math.max(second, logits[i]!);
    margins.push(logits[best]! - second);
    if (best === tok.bos || best === tok.eos) break;
    out.push(best);
    if (out.length >= MAX_TOKENS) break;
    logits = model.forward(state, best, pos);
  }
  return out;
}

test("a synthetic Qwen2-layout HF folder generates the reference model's tokens through a local cluster", async (t) => {
  const tmp = await tempDir();
  t.after(() => tmp.remove());
  const dir = join(tmp.path, "qwen2-synth");
  const synth = await runCli([
    "model",
    "synth",
    "--out",
    dir,
    "--format",
    "hf",
    "--arch",
    "qwen2",
    "--dim",
    "64",
    "--hidden",
    "160",
    "--layers",
    "3",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--vocab",
    "512",
    "--seq-len",
    "64",
    "--seed",
    "3",
    "--quiet",
  ]);
  assert.equal(synth.code, 0, synth.stderr);
  const info = await runCli(["model", "info", dir, "--json"]);
  assert.equal(info.code, 0, info.stderr);
  const parsed = JSON.parse(info.stdout) as Record<string, unknown>;
  // 512·64 embedding (tied) + 3 layers × (2·64 norms + 64·64·2 q/o + 64·32·2 k/v + 3·64·160 FFN + 64+32+32 biases) + 64.
  assert.deepEqual(
    [parsed["format"], parsed["dtype"], parsed["qkvBias"], parsed["parameters"]],
    ["hf", "f32", true, 162624],
  );

  const checkpoint = await loadModel(dir);
  assert.equal(checkpoint.qkvBias, true);
  assert.ok(checkpoint.weights.layers.every((l) => l.bq && l.bk && l.bv));
  const tokenizer = await loadTokenizer(bundled.tokenizer, checkpoint.shape.vocabSize);
  const reference = new ReferenceModel(checkpoint);
  const noBias = new ReferenceModel({
    shape: checkpoint.shape,
    weights: {
      ...checkpoint.weights,
      layers: checkpoint.weights.layers.map(({ bq: _q, bk: _k, bv: _v, ...rest }) => rest),
    },
  });

  const { address } = await startInProcessCluster(t, {
    gpu: { wireDtype: "f32" },
    coordinator: { modelPath: dir, tokenizerPath: bundled.tokenizer },
  });
  const out = await generate(address, {
    prompts: PROMPTS.map((prompt, i) => ({ id: `p${i}`, prompt })),
    sampling: { temperature: 0, maxTokens: MAX_TOKENS },
  });
  let differsWithoutBias = 0;
  for (let i = 0; i < PROMPTS.length; i++) {
    const r = out.results.get(`p${i}`)!;
    assert.equal(r.error, "", r.error);
    const margins: number[] = [];
    const want = referenceGreedy(reference, tokenizer, r.promptTokenIds, margins);
    assert.ok(
      Math.min(...margins) > MIN_MARGIN,
      `${PROMPTS[i]}: a near-tie (${Math.min(...margins)}) makes the comparison moot`,
    );
    assert.ok(want.length >= 4, `${PROMPTS[i]}: only ${want.length} tokens`);
    assert.deepEqual(r.completionTokenIds, want, PROMPTS[i]);
    const without = referenceGreedy(noBias, tokenizer, r.promptTokenIds, []);
    if (without.join() !== want.join()) differsWithoutBias++;
  }
  assert.equal(differsWithoutBias, PROMPTS.length, "every prompt's tokens depend on the biases");
});
