// Issue 12's model-architecture trap: a Qwen3 folder (q_norm/k_norm) and a
// Gemma-like config loaded and ran as Llama, computing another model;
// Mixtral, Phi-3 and Gemma 3 failed on an unrelated missing tensor or
// field. Each is now refused at load, naming the file, the architecture and
// what Tessera does not implement; unknown tensors are an error.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  loadCheckpoint,
  loadModel,
  readModelHeader,
  readSafetensors,
  writeHfModel,
  writeSafetensors,
} from "../src/index.js";

const STORIES = new URL("../../../../shared/models/stories260K.bin", import.meta.url).pathname;

type Config = Record<string, unknown>;
type Tensors = Map<string, { shape: number[]; data: Float32Array }>;

/**
 * A Hugging Face folder of stories260K (Llama) whose config and tensors
 * `edit` changes into another architecture's.
 */
async function folder(
  t: TestContext,
  edit: (config: Config, tensors: Tensors) => Config,
  options: { qkvBias?: boolean } = {},
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-arch-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ckpt = await loadCheckpoint(STORIES);
  const weights = options.qkvBias
    ? {
        ...ckpt.weights,
        layers: ckpt.weights.layers.map((l) => ({
          ...l,
          bq: new Float32Array(l.wq.length / ckpt.shape.dim),
          bk: new Float32Array(l.wk.length / ckpt.shape.dim),
          bv: new Float32Array(l.wv.length / ckpt.shape.dim),
        })),
      }
    : ckpt.weights;
  await writeHfModel(dir, ckpt.shape, weights);
  const configPath = join(dir, "config.json");
  const config = JSON.parse(await readFile(configPath, "utf8")) as Config;
  const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
  const edited = edit(config, tensors);
  await writeFile(configPath, JSON.stringify(edited, null, 2));
  await writeSafetensors(
    join(dir, "model.safetensors"),
    [...tensors].map(([name, v]) => ({ name, shape: v.shape, data: v.data })),
  );
  return dir;
}

/** Adds `[n]` zeros named `name` for every layer. */
function perLayer(config: Config, tensors: Tensors, name: (layer: number) => string, n: number) {
  for (let i = 0; i < (config["num_hidden_layers"] as number); i++)
    tensors.set(name(i), { shape: [n], data: new Float32Array(n) });
}

/** Renames tensors matching `from` (a regex on the name) with `to`. */
function rename(tensors: Tensors, from: RegExp, to: string) {
  for (const [name, v] of [...tensors]) {
    if (!from.test(name)) continue;
    tensors.delete(name);
    tensors.set(name.replace(from, to), v);
  }
}

const headDim = (c: Config) => (c["hidden_size"] as number) / (c["num_attention_heads"] as number);

test("a Qwen3 folder (q_norm/k_norm) is refused, by its config and by its tensors", async (t) => {
  const qwen3 = (c: Config, ts: Tensors, type: string, arch: string) => {
    perLayer(c, ts, (i) => `model.layers.${i}.self_attn.q_norm.weight`, headDim(c));
    perLayer(c, ts, (i) => `model.layers.${i}.self_attn.k_norm.weight`, headDim(c));
    return { ...c, model_type: type, architectures: [arch] };
  };
  const dir = await folder(t, (c, ts) => qwen3(c, ts, "qwen3", "Qwen3ForCausalLM"));
  await assert.rejects(
    loadModel(dir),
    /config\.json: model_type "qwen3" \(Qwen3ForCausalLM\) is not supported: per-head q_norm\/k_norm/,
  );
  // The same tensors under a Llama config: refused by the tensors, named.
  const disguised = await folder(t, (c, ts) => qwen3(c, ts, "llama", "LlamaForCausalLM"));
  await assert.rejects(
    readModelHeader(disguised),
    /tensors Tessera does not implement: model\.layers\.0\.self_attn\.q_norm\.weight, .*\(per-head q_norm\/k_norm\)/,
  );
});

test("a Gemma-like config is refused naming what Gemma has that Llama has not", async (t) => {
  const dir = await folder(t, (c) => ({
    ...c,
    model_type: "gemma",
    architectures: ["GemmaForCausalLM"],
    hidden_activation: "gelu_pytorch_tanh",
  }));
  await assert.rejects(
    loadModel(dir),
    /config\.json: model_type "gemma" \(GemmaForCausalLM\) is not supported: RMSNorm scaled by \(1 \+ weight\)/,
  );
  // No model_type, but Gemma's activation: refused too.
  const untyped = await folder(t, (c) => {
    const { model_type: _t, architectures: _a, ...rest } = c;
    return { ...rest, hidden_activation: "gelu_pytorch_tanh" };
  });
  await assert.rejects(loadModel(untyped), /hidden_activation "gelu_pytorch_tanh" is not supported \(only silu\)/);
});

test("a Gemma 3 config (text_config nested) is refused by its architecture, not for a missing hidden_size", async (t) => {
  const dir = await folder(t, (c) => {
    const { hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, ...rest } = c;
    return {
      model_type: "gemma3",
      architectures: ["Gemma3ForConditionalGeneration"],
      text_config: { ...rest, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads },
      vision_config: { model_type: "siglip_vision_model" },
    };
  });
  await assert.rejects(
    loadModel(dir),
    /config\.json: model_type "gemma3" \(Gemma3ForConditionalGeneration\) is not supported: a multimodal config \(text_config nested\)/,
  );
});

test("a Mixtral folder (block_sparse_moe) is refused naming its mixture-of-experts layers", async (t) => {
  const moe = (c: Config, ts: Tensors) => {
    rename(ts, /\.mlp\.gate_proj\./, ".block_sparse_moe.experts.0.w1.");
    rename(ts, /\.mlp\.down_proj\./, ".block_sparse_moe.experts.0.w2.");
    rename(ts, /\.mlp\.up_proj\./, ".block_sparse_moe.experts.0.w3.");
    return c;
  };
  const dir = await folder(t, (c, ts) => ({
    ...moe(c, ts),
    model_type: "mixtral",
    architectures: ["MixtralForCausalLM"],
    num_local_experts: 1,
  }));
  await assert.rejects(
    loadModel(dir),
    /config\.json: model_type "mixtral" \(MixtralForCausalLM\) is not supported: mixture-of-experts layers \(block_sparse_moe\)/,
  );
  const disguised = await folder(t, moe);
  await assert.rejects(
    loadModel(disguised),
    /tensors Tessera does not implement: model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight.*\(mixture-of-experts layers\)/,
  );
});

test("a Phi-3 folder (qkv_proj fused) is refused naming its fused projections", async (t) => {
  const dir = await folder(t, (c, ts) => {
    rename(ts, /\.self_attn\.q_proj\./, ".self_attn.qkv_proj.");
    return { ...c, model_type: "phi3", architectures: ["Phi3ForCausalLM"] };
  });
  await assert.rejects(
    loadModel(dir),
    /config\.json: model_type "phi3" \(Phi3ForCausalLM\) is not supported: fused qkv_proj and gate_up_proj projections/,
  );
  const disguised = await folder(t, (c, ts) => {
    rename(ts, /\.self_attn\.q_proj\./, ".self_attn.qkv_proj.");
    return c;
  });
  await assert.rejects(loadModel(disguised), /model\.layers\.0\.self_attn\.qkv_proj\.weight.*\(fused projections\)/);
});

test("an unknown tensor is an error naming it; an unknown model_type names what Tessera implements", async (t) => {
  const dir = await folder(t, (c, ts) => {
    ts.set("model.layers.1.self_attn.extra.weight", { shape: [4], data: new Float32Array(4) });
    return c;
  });
  await assert.rejects(readModelHeader(dir), /does not implement: model\.layers\.1\.self_attn\.extra\.weight$/);
  const other = await folder(t, (c) => ({ ...c, model_type: "mamba", architectures: ["MambaForCausalLM"] }));
  await assert.rejects(
    readModelHeader(other),
    /model_type "mamba" \(MambaForCausalLM\) is not supported: Tessera implements model_type llama, mistral, qwen2/,
  );
});

test("llama, mistral and qwen2 folders still load", async (t) => {
  const llama = await folder(t, (c) => c);
  assert.equal((await loadModel(llama)).shape.nLayers, 5);
  const mistral = await folder(t, (c) => ({ ...c, model_type: "mistral", architectures: ["MistralForCausalLM"] }));
  assert.equal((await loadModel(mistral)).shape.nLayers, 5);
  const qwen2 = await folder(t, (c) => c, { qkvBias: true });
  const q = JSON.parse(await readFile(join(qwen2, "config.json"), "utf8")) as Config;
  assert.deepEqual([q["model_type"], q["architectures"]], ["qwen2", ["Qwen2ForCausalLM"]]);
  assert.equal((await loadModel(qwen2)).shape.nLayers, 5);
  // A tied model may carry its lm_head copy; rotary inv_freq buffers are recomputed.
  const buffers = await folder(t, (c, ts) => {
    perLayer(c, ts, (i) => `model.layers.${i}.self_attn.rotary_emb.inv_freq`, headDim(c) / 2);
    return c;
  });
  assert.equal((await loadModel(buffers)).shape.nLayers, 5);
});

test("GGUF files, quantized folders and non-boolean switches are refused by name", async (t) => {
  const gguf = join(await mkdtemp(join(tmpdir(), "tessera-gguf-")), "model.gguf");
  t.after(() => rm(gguf, { force: true }));
  await writeFile(gguf, Buffer.concat([Buffer.from("GGUF"), Buffer.alloc(60)]));
  await assert.rejects(readModelHeader(gguf), /model\.gguf: is a GGUF file, which is not supported/);

  const gptq = await folder(t, (c) => ({ ...c, quantization_config: { quant_method: "gptq", bits: 4 } }));
  await assert.rejects(loadModel(gptq), /quantization_config \(quant_method "gptq"\) is not supported/);

  const tied = await folder(t, (c) => ({ ...c, tie_word_embeddings: "false" }));
  await assert.rejects(loadModel(tied), /tie_word_embeddings = "false" is not a boolean/);
});
