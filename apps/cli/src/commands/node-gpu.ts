/**
 * `tessera node gpu`: dense compute of a layer range on onnxruntime; its flags and their mapping onto runGpuNode's options.
 */
import { Option, type Command } from "commander";
import { ROLES } from "@tessera/core";
import { EXECUTION_PROVIDERS, GPU_NODE_DEFAULTS, WEIGHT_DTYPES, WIRE_DTYPES } from "@tessera/gpu-node";
import { int, security } from "../flags.js";
import { hostPort, price, profiled, registryOf } from "./node-flags.js";

const profileCommands = () => import("./profile.js");

/** The gpu-node's defaults (its options module's, written once there). */
const D = GPU_NODE_DEFAULTS;

/** Adds `tessera node gpu` to `node` (the `tessera node` command). */
export function addGpuNodeCommand(node: Command): void {
  profiled(
    hostPort(node.command(ROLES.gpu.cli).description("Dense compute of a layer range on onnxruntime."), "gpu", D),
  )
    .addOption(price())
    .addOption(
      new Option("--execution-provider <ep>", "onnxruntime execution provider")
        .choices(EXECUTION_PROVIDERS)
        .default(D.executionProvider)
        .env("TESSERA_EXECUTION_PROVIDER"),
    )
    .addOption(
      new Option("--threads <n>", "onnxruntime intra-op threads (default: onnxruntime's)")
        .argParser(int("--threads", 1))
        .env("TESSERA_THREADS"),
    )
    .addOption(
      new Option("--micro-batches <n>", "split each step's batch into this many micro-batches (Lamina's pipelining)")
        .argParser(int("--micro-batches", 1))
        .default(D.microBatches)
        .env("TESSERA_MICRO_BATCHES"),
    )
    .addOption(
      new Option("--max-in-flight <n>", "micro-batches of a step running at once")
        .argParser(int("--max-in-flight", 1))
        .default(D.maxInFlight)
        .env("TESSERA_MAX_IN_FLIGHT"),
    )
    .addOption(
      new Option("--wire-dtype <dtype>", "dtype of q/k/v and hidden states sent to other nodes (logits stay f32)")
        .choices(WIRE_DTYPES)
        .default(D.wireDtype)
        .env("TESSERA_WIRE_DTYPE"),
    )
    .addOption(
      new Option("--weight-dtype <dtype>", "dtype of the projection weights held (auto: f16 on cuda, f32 on cpu)")
        .choices(WEIGHT_DTYPES)
        .default(D.weightDtype)
        .env("TESSERA_WEIGHT_DTYPE"),
    )
    .addOption(
      new Option(
        "--lease-ttl <ms>",
        "how long the model lease stays live after its last Load or step (another coordinator's Load of another model waits)",
      )
        .argParser(int("--lease-ttl", 1))
        .default(D.leaseTtlMs)
        .env("TESSERA_LEASE_TTL"),
    )
    .action(async (o) => {
      const m = await import("@tessera/gpu-node");
      const options = {
        host: o.host,
        port: o.port,
        executionProvider: o.executionProvider,
        intraOpThreads: o.threads,
        microBatches: o.microBatches,
        maxInFlight: o.maxInFlight,
        wireDtype: o.wireDtype,
        weightDtype: o.weightDtype,
        leaseTtlMs: o.leaseTtl,
        pricePerHour: o.price,
        profile: await (await profileCommands()).profileOption("gpu", o.profile),
      };
      if (o.profileOnly)
        return (await profileCommands()).printProfile(() => m.profileGpuNode(m.compileGpuNodeOptions(options)));
      (await security()).applyTransport(o, "the gpu-node", true, "gpu-node");
      if (o.nats) (await security()).applyNatsAuth(o);
      return m.runGpuNode(options, registryOf(o), { port: o.metricsPort });
    });
}
