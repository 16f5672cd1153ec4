/**
 * The gpu-node: dense compute of a layer range on onnxruntime (the
 * tessera.v1.GpuNode service), and the ONNX graphs and sessions it runs, for
 * reuse by an in-process baseline.
 */
export { createGpuNode, GPU_NODE_SERVICE, type GpuNode } from "./gpu-node.js";
export {
  compileGpuNodeOptions,
  GPU_NODE_DEFAULTS,
  EXECUTION_PROVIDERS,
  WEIGHT_DTYPES,
  WIRE_DTYPES,
  type GpuNodeOptions,
  type CompiledGpuNodeOptions,
} from "./options.js";
export {
  planStep,
  planShards,
  splitMicroBatches,
  planMicroBatch,
  checkNextStages,
  type StepModel,
  type StepPlan,
  type PlannedSequence,
  type PlannedShard,
  type PlannedNode,
  type MicroBatch,
} from "./step-plan.js";
export { StepError, reasonOfCode, toNodeError, type StepNodeError } from "./step-error.js";
export { runGpuNode } from "./main.js";
export {
  DenseModel,
  ExecutionProviderError,
  defaultWeightDtype,
  type DenseModelOptions,
  type ExecutionProvider,
  type Qkv,
} from "./dense-model.js";
export { AttentionNodeError } from "./attend-streams.js";
export * from "./llama-graphs.js";
export * from "./onnx-builder.js";
export {
  profileGpuNode,
  checkGpuProfile,
  createOrtMatMulTimer,
  timeOrtLayerOverhead,
  deviceMemoryBytes,
  GPU_PROFILE_SIZES,
  LAYER_GAP_MS,
  MATMUL_STREAM_BYTES,
  type GpuProfileOptions,
  type OrtMatMulTimer,
  type OrtMatMulTimerOptions,
} from "./profile.js";
