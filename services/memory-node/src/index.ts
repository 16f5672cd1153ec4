/** The memory-node role: the Attention service with the KV cache in RAM. */
export {
  createMemoryNode,
  compileMemoryNodeOptions,
  measureReadBandwidth,
  ATTENTION_SERVICE_NAME,
  type MemoryNode,
  type MemoryNodeOptions,
  type CompiledMemoryNodeOptions,
} from "./memory-node.js";
export { runMemoryNode } from "./main.js";
