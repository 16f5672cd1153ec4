/** The coordinator role: plans batches onto nodes, drives prefill and decode, samples. */
export { createCoordinator, type CoordinatorService } from "./coordinator.js";
export { Authenticator, loadTokens, tokenDigest, type Identity, type TokenEntry } from "./api/auth.js";
export {
  COORDINATOR_DEFAULTS,
  KV_PLACEMENT_RULES,
  type KvPlacementRule,
  compileCoordinatorOptions,
  type CoordinatorOptions,
  type CompiledCoordinatorOptions,
} from "./options.js";
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
export {
  compileServedModels,
  defaultModelName,
  parseServedModelSpec,
  resolveServedModel,
  type ServedModel,
  type ServedModelOptions,
} from "./served-models.js";
export { splitLayers, type LayerRange } from "./pipeline.js";
export { Membership, type MembershipChange, type NodeRole } from "./membership.js";
export {
  attentionSpecOf,
  describeJobPlan,
  gpuSpecOf,
  jobPlanMessage,
  planKv,
  planStages,
  type AttentionSurvey,
  type GpuSurvey,
  type JobWorkload,
  type KvPlan,
} from "./job-plan.js";
export { runCoordinator, type RunHttpOptions } from "./main.js";
export { createHttpApi, type HttpApi, type HttpApiOptions } from "./http/server.js";
export {
  TOKENIZE_TASK_CHARS,
  TokenizerPool,
  type EncodedPrompt,
  type TokenizeCaller,
  type TokenizerPoolStats,
  type TokenizerRef,
} from "./tokenize/tokenizer-pool.js";
export {
  SequenceState,
  runBatch,
  splitLogitRows,
  traceStepEvery,
  type BatchContext,
  type LoadedModel,
  type StepOutcome,
  type TokenListener,
  type StepPart,
  type StepPlan,
} from "./engine/index.js";
export {
  JOB_WORKER_DEFAULTS,
  createJobWorker,
  type JobRunner,
  type JobWorker,
  type JobWorkerOptions,
} from "./api/job-worker.js";
export {
  JOB_ORPHAN_GRACE_MS,
  startJobSweeper,
  sweepJobs,
  type JobSweeper,
  type SweepResult,
} from "./api/job-retention.js";
export {
  checkBatchLimits,
  checkGenerateLimits,
  compileGenerateLimits,
  defaultGenerateLimits,
  maxLineBytesOf,
  type GenerateLimits,
  type GenerateLimitsOptions,
} from "./api/limits.js";
