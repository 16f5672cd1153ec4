/** The coordinator's batch engine in phases: schedule -> execute -> output (see engine.ts). */
export { runBatch, traceStepEvery } from "./engine.js";
export type { BatchContext, BatchJob, LoadedModel, TokenListener } from "./context.js";
export type { GenAiOperation } from "./genai-spans.js";
export {
  SequenceState,
  movedSequenceId,
  retriedSequenceId,
  sequenceId,
  shardSequenceId,
  type FinishReason,
  type Sequence,
  type Shard,
} from "./sequence.js";
export { logitRowsOf, splitLogitRows, type StepPart, type StepPlan } from "./step-plan.js";
export { StepExecutor, needsReload, type StepOutcome } from "./executor.js";
