/** Process entry of a gpu-node: serves until SIGINT/SIGTERM. */
import { runUntilSignal } from "@tessera/core";
import { createGpuNode, type GpuNodeOptions } from "./gpu-node.js";

/**
 * Runs a gpu-node as this process's main service until a signal stops it.
 * @throws ConfigError naming a bad option; Error when the port cannot be bound.
 */
export function runGpuNode(options: GpuNodeOptions): Promise<void> {
  return runUntilSignal(createGpuNode(options));
}
