import { readNodeAdvert, runUntilSignal } from "@tessera/core";
import { withRegistration, type NodeRegistryOptions } from "@tessera/nats";
import { createStorageNode, type StorageNodeOptions } from "./storage-node.js";

/**
 * Runs a storage-node as this process's main component: finds the sequences
 * already in `dataDir`, serves until SIGINT/SIGTERM, then drains and closes.
 * With `registry.nats` it registers in the NATS node registry once it
 * serves (price and profile from its own Info), heartbeats, and
 * deregisters on SIGINT/SIGTERM before the server stops.
 * @throws ConfigError naming the option when `options` are invalid;
 *   NatsError naming the servers when registering fails.
 */
export function runStorageNode(options: StorageNodeOptions, registry: NodeRegistryOptions = {}): Promise<void> {
  return runUntilSignal(
    withRegistration(createStorageNode(options), "storage", registry, (address) => readNodeAdvert("storage", address)),
  );
}
