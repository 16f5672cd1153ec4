import { runUntilSignal } from "@tessera/core";
import { createStorageNode, type StorageNodeOptions } from "./storage-node.js";

/**
 * Runs a storage-node as this process's main component: finds the sequences
 * already in `dataDir`, serves until SIGINT/SIGTERM, then drains and closes.
 * @throws ConfigError naming the option when `options` are invalid.
 */
export function runStorageNode(options: StorageNodeOptions): Promise<void> {
  return runUntilSignal(createStorageNode(options));
}
