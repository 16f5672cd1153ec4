import { readNodeAdvert, runUntilSignal } from "@tessera/core";
import { withRegistration, type NodeRegistryOptions } from "@tessera/nats";
import { createMemoryNode, type MemoryNodeOptions } from "./memory-node.js";

/**
 * Runs a memory-node as this process's main component: serves until
 * SIGINT/SIGTERM, then drains and closes.
 * With `registry.nats` it registers in the NATS node registry once it
 * serves (price and profile from its own Info), heartbeats, and
 * deregisters on SIGINT/SIGTERM before the server stops.
 * @throws ConfigError naming the option when `options` are invalid;
 *   NatsError naming the servers when registering fails.
 */
export function runMemoryNode(options: MemoryNodeOptions, registry: NodeRegistryOptions = {}): Promise<void> {
  return runUntilSignal(
    withRegistration(createMemoryNode(options), "memory", registry, (address) => readNodeAdvert("memory", address)),
  );
}
