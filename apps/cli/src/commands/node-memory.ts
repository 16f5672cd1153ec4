/**
 * `tessera node memory`: attention over a KV cache held in RAM; its flags and their mapping onto runMemoryNode's options.
 */
import { Option, type Command } from "commander";
import { ROLES, formatByteSize } from "@tessera/core";
import { MEMORY_NODE_DEFAULTS } from "@tessera/memory-node";
import { num, security, size } from "../flags.js";
import { attentionKernel, hostPort, price, profiled, registryOf } from "./node-flags.js";

const profileCommands = () => import("./profile.js");

/** The memory-node's defaults (its options module's, written once there). */
const D = MEMORY_NODE_DEFAULTS;

/** Adds `tessera node memory` to `node` (the `tessera node` command). */
export function addMemoryNodeCommand(node: Command): void {
  profiled(hostPort(node.command(ROLES.memory.cli).description("Attention over a KV cache held in RAM."), "memory", D))
    .addOption(
      new Option("--capacity <bytes>", "KV bytes this node may hold")
        .argParser(size("--capacity"))
        .default(D.capacityBytes, formatByteSize(D.capacityBytes))
        .env("TESSERA_CAPACITY"),
    )
    .addOption(price())
    .addOption(attentionKernel(D.attentionKernel))
    .addOption(
      new Option("--read-bandwidth <bytes/s>", "RAM read bandwidth to advertise (default: measured at start)")
        .argParser(num("--read-bandwidth", 0, Number.MAX_VALUE))
        .env("TESSERA_READ_BANDWIDTH"),
    )
    .action(async (o) => {
      const m = await import("@tessera/memory-node");
      const options = {
        host: o.host,
        port: o.port,
        capacityBytes: o.capacity,
        pricePerHour: o.price,
        readBytesPerSecond: o.readBandwidth,
        attentionKernel: o.attentionKernel,
        profile: await (await profileCommands()).profileOption("memory", o.profile),
      };
      if (o.profileOnly) {
        const compiled = m.compileMemoryNodeOptions(options);
        return (await profileCommands()).printProfile(
          () => m.profileMemoryNode(compiled),
          [["attention kernel", compiled.attentionKernel]],
        );
      }
      (await security()).applyTransport(o, "the memory-node", true, "memory-node");
      if (o.nats) (await security()).applyNatsAuth(o);
      return m.runMemoryNode(options, registryOf(o), { port: o.metricsPort });
    });
}
