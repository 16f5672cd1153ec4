/** The coordinator role: plans batches onto nodes, drives prefill and decode, samples. */
export { createCoordinator, type CoordinatorService } from "./coordinator.js";
export { compileCoordinatorOptions, type CoordinatorOptions, type CompiledCoordinatorOptions } from "./options.js";
export {
  attentionDollarsPerToken,
  placeSequences,
  splitKvHeads,
  type AttentionNodeInfo,
  type AttentionNodeRef,
  type PlacementEconomics,
  type KvHeadSplit,
  type Placement,
  type PlacementRequest,
  type ShardPlacement,
} from "./placement.js";
export { splitLayers, type LayerRange } from "./pipeline.js";
export { runCoordinator } from "./main.js";
