/**
 * Shared core of every Tessera role: errors, lifecycle, the tensor codec,
 * units, model shape, option checks, prompt and batch files and the roles
 * table (model formats: @tessera/model; attention: @tessera/attention).
 */
export {
  TesseraError,
  CheckpointError,
  type BadLine,
  InputFileError,
  NodeUnreachableError,
  CapacityError,
  ConfigError,
} from "./errors.js";
export {
  type ServiceState,
  type Service,
  type ReadyMessage,
  runUntilSignal,
  type CompanionHooks,
  withCompanion,
} from "./lifecycle.js";
export { type ModelShape, kvDim, kvBytesPerPosition, parameterCount } from "./model-shape.js";
export {
  type WireDtype,
  f16ToF32,
  f32BitsToF16Bits,
  encodeF16,
  decodeF16,
  f32Tensor,
  wireTensor,
  type StridedBlock,
  stridedWireTensor,
  tensorF32,
  tensorWireDtype,
  checkFiniteValues,
  QK_MAX_ABS,
} from "./tensor.js";
export { parseByteSize, formatBytes, formatByteSize, parseDuration, formatDuration } from "./units.js";
export {
  type KvPlacement,
  type PromptSpec,
  type PromptLimits,
  parsePromptsJsonl,
  type GenerateSampling,
  wireKvPlacement,
  generateRequest,
} from "./prompts.js";
export { PROMPT_FILE_DEFAULTS, type PromptFileLine, promptFileLines } from "./prompt-lines.js";
export {
  type BatchFormat,
  type BatchInput,
  detectBatchFormat,
  parseOpenAiBatchJsonl,
  parseBatchInput,
  type TesseraResultLine,
  type OpenAiBatchResultLine,
  type BatchResultContext,
  tesseraResultLine,
  openAiResultLine,
  formatBatchResult,
} from "./batch-format.js";
export {
  type RoleSpec,
  ROLES,
  type Role,
  type NodeRole,
  type AttentionRole,
  ALL_ROLES,
  NODE_ROLES,
  ATTENTION_ROLES,
  isRole,
  isNodeRole,
  isAttentionRole,
  nodeName,
  type CertRole,
  CERT_ROLES,
  ROLE_URI_PREFIX,
  roleUri,
  certRoleOf,
  rolesOfSubjectAltName,
} from "./roles.js";
export {
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_HOST,
  positiveInt,
  nonNegativeInt,
  nonNegativeNumber,
  positiveMs,
  byteSizeOption,
  portOption,
  hostOption,
  oneOf,
  describeChoices,
  isHostPort,
} from "./option-checks.js";
export {
  type ClockTick,
  RunningClock,
  RunningTime,
  type RunningTimeOptions,
  type RunningTimeoutOptions,
  runningNow,
  runningTimeout,
} from "./running-clock.js";
