/**
 * Issue 3, item 1: `tessera model export-hf` writes stories260K as a Hugging
 * Face folder (f32 safetensors with HF's q/k rotary permutation, config.json,
 * tokenizer.json converted from tok512.bin), and that folder, served by a
 * real local cluster, generates greedily the same tokens and text as the
 * llama2.c file.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { bundled, generate, tempDir } from "@tessera/testing";
import { startTestCluster, runCli } from "./helpers.js";

const PROMPTS = ["Once upon a time", "Sam found a shiny stone", "The little girl wanted", "One sunny morning, Max"];

test("an exported HF folder generates the llama2.c file's tokens through a local cluster", async (t) => {
  const tmp = await tempDir();
  t.after(() => tmp.remove());
  const dir = join(tmp.path, "stories260K-hf");
  const exp = await runCli([
    "model",
    "export-hf",
    "--model",
    bundled.model,
    "--tokenizer",
    bundled.tokenizer,
    "--out",
    dir,
  ]);
  assert.equal(exp.code, 0, exp.stderr);
  assert.deepEqual((await readdir(dir)).sort(), [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  const info = await runCli(["model", "info", dir, "--json"]);
  assert.equal(info.code, 0, info.stderr);
  const parsed = JSON.parse(info.stdout) as { format: string; dtype: string; parameters: number };
  assert.deepEqual([parsed.format, parsed.dtype, parsed.parameters], ["hf", "f32", 260032]);

  // Both served: the folder (the default) and the llama2.c file with its own tokenizer.
  const cluster = await startTestCluster({
    model: dir,
    tokenizer: join(dir, "tokenizer.json"),
    flags: { coordinator: ["--model", `${bundled.model},tokenizer=${bundled.tokenizer}`] },
  });
  t.after(() => cluster.stop());
  const request = (extra: { modelPath?: string; tokenizerPath?: string }) => ({
    ...extra,
    prompts: PROMPTS.map((prompt, i) => ({ id: `p${i}`, prompt })),
    sampling: { temperature: 0, maxTokens: 48 },
  });
  const hf = await generate(cluster.address, request({}));
  const llama2c = await generate(
    cluster.address,
    request({ modelPath: bundled.model, tokenizerPath: bundled.tokenizer }),
  );
  assert.equal(hf.results.size, PROMPTS.length);
  for (let i = 0; i < PROMPTS.length; i++) {
    const a = hf.results.get(`p${i}`)!;
    const b = llama2c.results.get(`p${i}`)!;
    assert.equal(a.error, "", a.error);
    assert.equal(b.error, "", b.error);
    assert.deepEqual(a.promptTokenIds, b.promptTokenIds);
    assert.ok(b.completionTokenIds.length > 0);
    assert.deepEqual(a.completionTokenIds, b.completionTokenIds, PROMPTS[i]);
    assert.equal(a.completion, b.completion, PROMPTS[i]);
  }
});
