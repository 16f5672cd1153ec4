/**
 * Which Hugging Face architectures Tessera implements, and the refusal of
 * every other at load: a folder whose config.json names another
 * `model_type` / `architectures`, or whose safetensors hold tensors
 * Tessera's Llama-family graph does not read (q_norm/k_norm, experts, fused
 * projections, ...), would otherwise load and compute a different model, or
 * fail later on an unrelated missing field or tensor.
 *
 * Implemented: Llama (LlamaForCausalLM), Mistral (MistralForCausalLM: Llama
 * tensors plus a sliding window) and Qwen2 (Qwen2ForCausalLM: Llama tensors
 * plus q/k/v biases).
 */
import { CheckpointError } from "@tessera/core";
import { shown } from "./model-limits.js";

/** The `model_type`s Tessera implements. */
const SUPPORTED_HF_MODEL_TYPES: readonly string[] = Object.freeze(["llama", "mistral", "qwen2"]);

/** The `architectures` entries Tessera implements (any of them with any supported model_type). */
const SUPPORTED_HF_ARCHITECTURES: readonly string[] = Object.freeze([
  "LlamaForCausalLM",
  "MistralForCausalLM",
  "Qwen2ForCausalLM",
]);

/** What a known architecture has that Tessera does not implement, by model_type. */
const UNSUPPORTED: Readonly<Record<string, string>> = Object.freeze({
  qwen3: "per-head q_norm/k_norm",
  qwen3_moe: "per-head q_norm/k_norm and mixture-of-experts layers",
  qwen2_moe: "mixture-of-experts layers (shared and routed experts)",
  mixtral: "mixture-of-experts layers (block_sparse_moe)",
  phi3: "fused qkv_proj and gate_up_proj projections",
  phi: "parallel attention and MLP, LayerNorm, GELU and partial rotary",
  gemma: "RMSNorm scaled by (1 + weight), GeGLU MLP and embeddings scaled by sqrt(hidden_size)",
  gemma2: "RMSNorm scaled by (1 + weight), GeGLU MLP, sandwich norms and logit soft-capping",
  gemma3: "a multimodal config (text_config nested), q_norm/k_norm, sandwich norms and GeGLU MLP",
  gemma3_text: "q_norm/k_norm, sandwich norms, GeGLU MLP and local/global attention layers",
  deepseek_v2: "multi-head latent attention and mixture-of-experts layers",
  deepseek_v3: "multi-head latent attention and mixture-of-experts layers",
  olmo2: "q_norm/k_norm and post-norms",
  cohere: "LayerNorm, parallel attention and MLP, and logit scaling",
  falcon: "parallel attention and MLP, LayerNorm and fused query_key_value",
  gpt2: "learned position embeddings, LayerNorm and fused c_attn",
});

/** The model_type an `architectures` entry names (Qwen3ForCausalLM -> qwen3), for the reason table. */
const ARCHITECTURE_MODEL_TYPE: Readonly<Record<string, string>> = Object.freeze({
  Qwen3ForCausalLM: "qwen3",
  Qwen3MoeForCausalLM: "qwen3_moe",
  Qwen2MoeForCausalLM: "qwen2_moe",
  MixtralForCausalLM: "mixtral",
  Phi3ForCausalLM: "phi3",
  PhiForCausalLM: "phi",
  GemmaForCausalLM: "gemma",
  Gemma2ForCausalLM: "gemma2",
  Gemma3ForConditionalGeneration: "gemma3",
  Gemma3ForCausalLM: "gemma3_text",
});

/**
 * Refuses a config.json (parsed, at `path`) whose `model_type` or
 * `architectures` Tessera does not implement, or whose `hidden_activation`
 * (Gemma's name for the MLP activation) is not silu. A config with neither
 * model_type nor architectures is read as Llama (as before).
 * @throws CheckpointError naming the file, the architecture and what is
 *   unsupported, e.g. `config.json: model_type "qwen3" (Qwen3ForCausalLM) is
 *   not supported: per-head q_norm/k_norm`.
 */
export function checkHfArchitecture(path: string, config: Record<string, unknown>): void {
  const modelType = config["model_type"];
  const architectures = config["architectures"];
  const archList = Array.isArray(architectures) ? architectures.map(String) : [];
  if (architectures !== undefined && !Array.isArray(architectures)) {
    throw new CheckpointError(path, `architectures = ${shown(architectures)} is not a list`);
  }
  const named = archList.length > 0 ? ` (${archList.join(", ")})` : "";
  if (modelType !== undefined && typeof modelType !== "string") {
    throw new CheckpointError(path, `model_type = ${shown(modelType)} is not a string`);
  }
  if (modelType !== undefined && !SUPPORTED_HF_MODEL_TYPES.includes(modelType)) {
    throw new CheckpointError(path, `model_type "${modelType}"${named} is not supported: ${reason(modelType)}`);
  }
  const quantization = config["quantization_config"];
  if (quantization !== undefined && quantization !== null) {
    const method = (quantization as { quant_method?: unknown }).quant_method;
    throw new CheckpointError(
      path,
      `quantization_config (quant_method ${shown(method)}) is not supported: only unquantized F32/F16/BF16 weights load`,
    );
  }
  const activation = config["hidden_activation"];
  if (activation !== undefined && activation !== null && activation !== "silu") {
    throw new CheckpointError(path, `hidden_activation ${shown(activation)} is not supported (only silu)`);
  }
  const other = archList.find((a) => !SUPPORTED_HF_ARCHITECTURES.includes(a));
  if (other !== undefined) {
    const type = ARCHITECTURE_MODEL_TYPE[other];
    throw new CheckpointError(
      path,
      `architectures ${JSON.stringify(archList)} name ${other}, which is not supported: ${type ? reason(type) : `not one of ${SUPPORTED_HF_ARCHITECTURES.join(", ")}`}`,
    );
  }
}

function reason(modelType: string): string {
  return UNSUPPORTED[modelType] ?? `Tessera implements model_type ${SUPPORTED_HF_MODEL_TYPES.join(", ")}`;
}

/** Tensors a checkpoint may hold that are derived from the config and not read (recomputed). */
const DERIVED = /\.rotary_emb\.inv_freq$/;

/** What a tensor Tessera does not read suggests the model has, for the error. */
const TENSOR_FEATURES: readonly [RegExp, string][] = [
  [/\.(q_norm|k_norm)\./, "per-head q_norm/k_norm"],
  [/\.(block_sparse_moe|experts|shared_expert|gate\.weight$)/, "mixture-of-experts layers"],
  [/\.(qkv_proj|gate_up_proj|query_key_value|c_attn)\./, "fused projections"],
  [/\.(pre_feedforward_layernorm|post_feedforward_layernorm)\./, "sandwich norms"],
  [/\.bias$/, "biases"],
];

/**
 * Refuses safetensors that hold tensors Tessera does not read: `names` are
 * every tensor in the folder, `expected` those the config implies (a
 * tied model's lm_head copy and rotary inv_freq buffers are allowed).
 * @throws CheckpointError naming the unknown tensors (the first few and
 *   how many) and what they suggest, e.g. per-head q_norm/k_norm.
 */
export function checkHfTensors(dir: string, names: Iterable<string>, expected: ReadonlySet<string>, tied: boolean) {
  const unknown = [...names].filter((n) => !expected.has(n) && !DERIVED.test(n) && !(tied && n === "lm_head.weight"));
  if (unknown.length === 0) return;
  const features = TENSOR_FEATURES.filter(([re]) => unknown.some((n) => re.test(n))).map(([, f]) => f);
  const shown = unknown.slice(0, 4).join(", ") + (unknown.length > 4 ? `, ... (${unknown.length} in all)` : "");
  throw new CheckpointError(
    dir,
    `the safetensors have tensors Tessera does not implement: ${shown}` +
      (features.length > 0 ? ` (${features.join(", ")})` : ""),
  );
}
