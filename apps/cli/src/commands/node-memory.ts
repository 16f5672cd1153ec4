/**
 * `tessera node memory`: attention over a KV cache held in RAM; its flags and their mapping onto runMemoryNode's options.
 */
import { Option, type Command } from "commander";
import { ROLES, parseByteSize } from "@tessera/core";
import { num, security, size } from "../flags.js";
import { hostPort, price, profiled, registryOf } from "./node-flags.js";

const profileCommands = () => import("./profile.js");

/**
 * The memory-node flags' defaults, in one place (the service's own options
 * module will own them; this object then points there). Sizes as
 * byte-size strings.
 */
export const MEMORY_FLAG_DEFAULTS = Object.freeze({
  port: ROLES.memory.defaultPort,
  capacity: "1GiB",
});
const D = MEMORY_FLAG_DEFAULTS;

/** Adds `tessera node memory` to `node` (the `tessera node` command). */
export function addMemoryNodeCommand(node: Command): void {
  profiled(hostPort(node.command(ROLES.memory.cli).description("Attention over a KV cache held in RAM."), D.port))
    .addOption(
      new Option("--capacity <bytes>", "KV bytes this node may hold")
        .argParser(size("--capacity"))
        .default(parseByteSize("capacity", D.capacity), D.capacity)
        .env("TESSERA_CAPACITY"),
    )
    .addOption(price())
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
        profile: await (await profileCommands()).profileOption("memory", o.profile),
      };
      if (o.profileOnly)
        return (await profileCommands()).printProfile(() => m.profileMemoryNode(m.compileMemoryNodeOptions(options)));
      (await security()).applyTransport(o, "the memory-node", true);
      if (o.nats) (await security()).applyNatsAuth(o);
      return m.runMemoryNode(options, registryOf(o), { port: o.metricsPort });
    });
}
