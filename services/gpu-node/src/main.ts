/** Process entry of a gpu-node: serves until SIGINT/SIGTERM. */
import { readNodeAdvert, runUntilSignal } from "@tessera/core";
import { withRegistration, type NodeRegistryOptions } from "@tessera/nats";
import { createGpuNode, type GpuNodeOptions } from "./gpu-node.js";

/**
 * Runs a gpu-node as this process's main service until a signal stops it.
 * With `registry.nats` it registers in the NATS node registry once it
 * serves (price and profile from its own Info), heartbeats, and
 * deregisters on SIGINT/SIGTERM before the server stops.
 * @throws ConfigError naming a bad option; Error when the port cannot be
 *   bound; NatsError naming the servers when registering fails.
 */
export function runGpuNode(options: GpuNodeOptions, registry: NodeRegistryOptions = {}): Promise<void> {
  return runUntilSignal(
    withRegistration(createGpuNode(options), "gpu", registry, (address) => readNodeAdvert("gpu", address)),
  );
}
