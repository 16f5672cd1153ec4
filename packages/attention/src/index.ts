/**
 * Causal GQA attention for the attention nodes: the kernels (one file each
 * under kernels/, picked by name from kernels/registry.ts), the validation
 * and answering of Attend requests, the KV layout checks of OpenSequence,
 * and the attention-node shell the memory- and storage-nodes share.
 */
export {
  checkAttentionDims,
  checkKvCacheCall,
  attentionDimsKey,
  type AttentionDims,
  type KvLayoutDims,
  type CausalQueries,
} from "./dims.js";
export {
  attentionKernel,
  attentionKernelNames,
  registerAttentionKernel,
  compileAttentionKernelOption,
  type AttentionKernel,
  type AttentionScratch,
  type OnlineAttention,
} from "./kernels/registry.js";
export { DEFAULT_ATTENTION_KERNEL } from "./kernels/built-in.js";
export { jsKernel, createAttentionScratch } from "./kernels/js.js";
export { wasmKernel, attendKvCacheInHeap } from "./kernels/wasm.js";
export { attendKvCache, createOnlineAttention, type OnlineAttentionOptions } from "./online.js";
export {
  AttentionRequestError,
  SequenceKvError,
  answerAttend,
  attendErrorReason,
  planAttendRequest,
  type AttendTarget,
  type AttendPlan,
  type AttendPlanItem,
} from "./attend-request.js";
export { kvSequenceBytes, sameKvLayout, describeKvLayout, checkOpenSequence } from "./kv-layout.js";
export {
  SPLIT_MIN_BYTES,
  attendKvBytes,
  createAttentionWorkers,
  type HeapAttendItem,
  type AttentionWorkers,
  type AttentionWorkersOptions,
} from "./attention-threads.js";
export {
  WASM_ATTENTION_BLOCK,
  ATTENTION_QUERY_CHUNK,
  wasmAttentionBytes,
  checkKvRows,
  createWasmAttention,
  foldBlocks,
  writeOutputs,
  type WasmAttention,
  type WasmAttentionLayout,
} from "./attention-wasm.js";
export { WASM_HEAP_MAX_BYTES, createWasmHeap, type WasmHeap, type WasmKernels } from "./wasm-attention.js";
export { traceAttend, attendKvBytesPerPosition } from "./attention-trace.js";
export {
  ATTENTION_SERVICE_NAME,
  createAttentionNode,
  type AttentionKvStore,
  type AttentionNodeContext,
  type AttentionNodeSpec,
  type OpenedSequence,
} from "./node-shell.js";
