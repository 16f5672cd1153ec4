import { runUntilSignal } from "@tessera/core";
import { createMemoryNode, type MemoryNodeOptions } from "./memory-node.js";

/**
 * Runs a memory-node as this process's main component: serves until
 * SIGINT/SIGTERM, then drains and closes.
 * @throws ConfigError naming the option when `options` are invalid.
 */
export function runMemoryNode(options: MemoryNodeOptions): Promise<void> {
  return runUntilSignal(createMemoryNode(options));
}
