/**
 * `tessera node storage`: attention streamed from a KV cache in files; its flags and their mapping onto runStorageNode's options.
 */
import { Option, type Command } from "commander";
import { ROLES, parseByteSize } from "@tessera/core";
import { int, num, security, size } from "../flags.js";
import { hostPort, price, profiled, registryOf } from "./node-flags.js";

const profileCommands = () => import("./profile.js");

/**
 * The storage-node flags' defaults, in one place (the service's own options
 * module will own them; this object then points there). Sizes as
 * byte-size strings.
 */
export const STORAGE_FLAG_DEFAULTS = Object.freeze({
  port: ROLES.storage.defaultPort,
  buffer: "64MiB",
  blockPositions: 256,
  capacity: "64GiB",
  fsync: "always",
  readBandwidth: 0,
});
const D = STORAGE_FLAG_DEFAULTS;

/** Adds `tessera node storage` to `node` (the `tessera node` command). */
export function addStorageNodeCommand(node: Command): void {
  profiled(
    hostPort(node.command(ROLES.storage.cli).description("Attention streamed from a KV cache in files."), D.port),
  )
    .addOption(
      new Option("--data-dir <dir>", "where KV cache files live").makeOptionMandatory().env("TESSERA_DATA_DIR"),
    )
    .addOption(
      new Option("--buffer <bytes>", "RAM used to stream KV blocks")
        .argParser(size("--buffer"))
        .default(parseByteSize("buffer", D.buffer), D.buffer)
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
        .default(parseByteSize("capacity", D.capacity), D.capacity)
        .env("TESSERA_CAPACITY"),
    )
    .addOption(
      new Option("--fsync <policy>", "always: KV is on disk before Attend answers; never: left to the OS")
        .choices(["always", "never"])
        .default(D.fsync)
        .env("TESSERA_FSYNC"),
    )
    .addOption(price())
    .addOption(
      new Option("--read-bandwidth <bytes/s>", "KV read bandwidth to advertise (0 = unknown)")
        .argParser(num("--read-bandwidth", 0, Number.MAX_VALUE))
        .default(D.readBandwidth)
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
        profile: await (await profileCommands()).profileOption("storage", o.profile),
      };
      if (o.profileOnly)
        return (await profileCommands()).printProfile(() => m.profileStorageNode(m.compileStorageNodeOptions(options)));
      (await security()).applyTransport(o, "the storage-node", true);
      if (o.nats) (await security()).applyNatsAuth(o);
      return m.runStorageNode(options, registryOf(o), { port: o.metricsPort });
    });
}
