/** The memory-node role: the Attention service with the KV cache in RAM. */
export {
  createMemoryNode,
  compileMemoryNodeOptions,
  ATTENTION_SERVICE_NAME,
  type MemoryNode,
  type MemoryNodeOptions,
  type CompiledMemoryNodeOptions,
} from "./memory-node.js";
export { runMemoryNode } from "./main.js";
/** The start-up read-bandwidth measure a memory-node advertises (from @tessera/profiling). */
export { measureReadBandwidth } from "@tessera/profiling";
export { profileMemoryNode, checkMemoryProfile, MEMORY_PROFILE_SIZES, type MemoryProfileOptions } from "./profile.js";
