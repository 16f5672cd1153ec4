/**
 * @tessera/model: model formats and what reads them: llama2.c checkpoints,
 * safetensors files and Hugging Face folders, tokenizers (llama2.c and
 * tokenizer.json), synthetic weights, the f32 reference model and the
 * sampler.
 */
export {
  LLAMA2C_V1_MAGIC,
  LLAMA2C_V1_HEADER_BYTES,
  LLAMA2C_LEGACY_HEADER_BYTES,
  type CheckpointFormat,
  type LayerWeights,
  type LayerWeightName,
  type WeightName,
  LAYER_WEIGHT_NAMES,
  weightDims,
  type WeightReader,
  type ModelSource,
  type LlamaWeights,
  type CheckpointHeader,
  type Checkpoint,
  readCheckpointHeader,
  openCheckpoint,
  weightsReader,
  checkpointSource,
  readAllWeights,
  loadCheckpoint,
  type WriteCheckpointOptions,
  writeCheckpoint,
} from "./checkpoint.js";
export { MODEL_LIMITS } from "./model-limits.js";
export {
  type SafetensorsDtype,
  SAFETENSORS_DTYPE_BYTES,
  type SafetensorsTensorInfo,
  type SafetensorsHeader,
  type SafetensorsTensor,
  type SafetensorsWriteOptions,
  SAFETENSORS_MODEL_FILE,
  SAFETENSORS_INDEX_FILE,
  bf16ToF32,
  f32ToBf16,
  encodeTensor,
  decodeTensor,
  readSafetensorsHeader,
  readFully,
  readSafetensors,
  writeSafetensors,
  type SafetensorsStore,
  openSafetensorsFolder,
  writeSafetensorsFolder,
} from "./safetensors.js";
export {
  HF_CONFIG_FILE,
  type HfLlamaConfig,
  type HfModelHeader,
  type HfDtype,
  permuteRotaryToHf,
  permuteRotaryFromHf,
  readHfModelHeader,
  openHfModel,
  loadHfModel,
  type WriteHfModelOptions,
  writeHfModel,
  loadModel,
  openModel,
  readModelHeader,
} from "./hf-model.js";
export {
  BOS_TOKEN,
  EOS_TOKEN,
  type EncodeOptions,
  type StreamingDecoder,
  type Tokenizer,
  createTokenizer,
  createDecoder,
  loadTokenizer,
  parseTokenizer,
} from "./tokenizer.js";
export {
  type HfTokenizerFiles,
  llama2cToHfTokenizer,
  createHfTokenizer,
  loadHfTokenizer,
  loadModelTokenizer,
} from "./hf-tokenizer.js";
export { llamaHiddenDim, type SynthOptions, synthReader, synthesizeWeights } from "./synth.js";
export { type ReferenceState, ReferenceModel } from "./reference-model.js";
export {
  type Rng,
  createRng,
  type SamplerOptions,
  type Sampler,
  argmax,
  softmaxF32InPlace,
  createSampler,
} from "./sampler.js";
export { bundled, defaultTokenizerFor, repoRoot } from "./bundled.js";
