/** The memory-node role: the Attention service with the KV cache in RAM. */
export { createMemoryNode, type MemoryNode } from "./memory-node.js";
export {
  compileMemoryNodeOptions,
  MEMORY_NODE_DEFAULTS,
  type MemoryNodeOptions,
  type CompiledMemoryNodeOptions,
} from "./options.js";
/** gRPC service name the health service reports on (the attention-node shell's). */
export { ATTENTION_SERVICE_NAME } from "@tessera/attention";
export { runMemoryNode } from "./main.js";
/** The start-up read-bandwidth measure a memory-node advertises (from @tessera/profiling). */
export { measureReadBandwidth } from "@tessera/profiling";
export { profileMemoryNode, checkMemoryProfile, MEMORY_PROFILE_SIZES, type MemoryProfileOptions } from "./profile.js";
