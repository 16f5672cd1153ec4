/** Shared core of every Tessera role: model formats, tensors, errors, lifecycle (attention: @tessera/attention). */
export * from "./errors.js";
export * from "./model-shape.js";
export * from "./tensor.js";
export * from "./checkpoint.js";
export * from "./server.js";
export * from "./lifecycle.js";
export * from "./units.js";
export * from "./tokenizer.js";
export * from "./sampler.js";
export * from "./reference-model.js";
export * from "./synth.js";
export * from "./prompts.js";
export * from "./batch-format.js";
export * from "./grpc-service.js";
export * from "./safetensors.js";
export * from "./hf-model.js";
export * from "./hf-tokenizer.js";
export { bestOf, dropFilePages, measureReadBandwidth } from "./measure.js";
export {
  ROLES,
  ALL_ROLES,
  NODE_ROLES,
  ATTENTION_ROLES,
  isRole,
  isNodeRole,
  isAttentionRole,
  nodeName,
  type Role,
  type RoleSpec,
  type NodeRole,
  type AttentionRole,
} from "./roles.js";
