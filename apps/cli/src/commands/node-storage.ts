/**
 * `tessera node storage`: attention streamed from a KV cache in files; its flags and their mapping onto runStorageNode's options.
 */
import { Option, type Command } from "commander";
import { ROLES, formatByteSize } from "@tessera/core";
import { FSYNC_POLICIES, STORAGE_NODE_DEFAULTS } from "@tessera/storage-node";
import { int, num, security, size } from "../flags.js";
import { attentionKernel, hostPort, price, profiled, registryOf } from "./node-flags.js";

const profileCommands = () => import("./profile.js");

/** The storage-node's defaults (its options module's, written once there). */
const D = STORAGE_NODE_DEFAULTS;

/** Adds `tessera node storage` to `node` (the `tessera node` command). */
export function addStorageNodeCommand(node: Command): void {
  profiled(
    hostPort(node.command(ROLES.storage.cli).description("Attention streamed from a KV cache in files."), "storage", D),
  )
    .addOption(
      new Option("--data-dir <dir>", "where KV cache files live").makeOptionMandatory().env("TESSERA_DATA_DIR"),
    )
    .addOption(
      new Option("--buffer <bytes>", "RAM used to stream KV blocks")
        .argParser(size("--buffer"))
        .default(D.bufferBytes, formatByteSize(D.bufferBytes))
        .env("TESSERA_BUFFER"),
    )
    .addOption(
      new Option("--block-positions <n>", "positions per KV block")
        .argParser(int("--block-positions", 1))
        .default(D.blockPositions)
        .env("TESSERA_BLOCK_POSITIONS"),
    )
    .addOption(
      new Option("--capacity <bytes>", "disk bytes this node may use")
        .argParser(size("--capacity"))
        .default(D.capacityBytes, formatByteSize(D.capacityBytes))
        .env("TESSERA_CAPACITY"),
    )
    .addOption(
      new Option("--fsync <policy>", "always: KV is on disk before Attend answers; never: left to the OS")
        .choices(FSYNC_POLICIES)
        .default(D.fsync)
        .env("TESSERA_FSYNC"),
    )
    .addOption(price())
    .addOption(attentionKernel(D.attentionKernel))
    .addOption(
      new Option("--read-bandwidth <bytes/s>", "KV read bandwidth to advertise (0 = unknown)")
        .argParser(num("--read-bandwidth", 0, Number.MAX_VALUE))
        .default(D.readBytesPerSecond)
        .env("TESSERA_READ_BANDWIDTH"),
    )
    .action(async (o) => {
      const m = await import("@tessera/storage-node");
      const options = {
        host: o.host,
        port: o.port,
        dataDir: o.dataDir,
        bufferBytes: o.buffer,
        blockPositions: o.blockPositions,
        capacityBytes: o.capacity,
        fsync: o.fsync,
        pricePerHour: o.price,
        readBytesPerSecond: o.readBandwidth,
        attentionKernel: o.attentionKernel,
        profile: await (await profileCommands()).profileOption("storage", o.profile),
      };
      if (o.profileOnly) {
        const compiled = m.compileStorageNodeOptions(options);
        return (await profileCommands()).printProfile(
          () => m.profileStorageNode(compiled),
          [["attention kernel", compiled.attentionKernel]],
        );
      }
      (await security()).applyTransport(o, "the storage-node", true, "storage-node");
      if (o.nats) (await security()).applyNatsAuth(o);
      return m.runStorageNode(options, registryOf(o), { port: o.metricsPort });
    });
}
