/**
 * The embedded local cluster of `tessera run` and `tessera serve`: its
 * node flags (shared by both commands) and its start from them, after the
 * model and tokenizer are checked (so a bad path fails before anything starts).
 */
import { Option, type Command } from "commander";
import { loadModelTokenizer, readModelHeader } from "@tessera/model";
import { int } from "./flags.js";
import { startLocalCluster, type LocalCluster } from "./local-cluster.js";

/** The embedded cluster's flags (see {@link addEmbeddedClusterFlags}). */
export interface EmbeddedClusterFlags {
  storageThreshold?: number;
  memoryCapacity?: string;
  storageBuffer?: string;
  executionProvider?: string;
  wireDtype?: "f16" | "f32";
  kvHeadGroups?: number;
  verbose: boolean;
}

/** Adds the embedded cluster's node flags to `c`. */
export function addEmbeddedClusterFlags(c: Command): Command {
  return c
    .option(
      "--storage-threshold <tokens>",
      "embedded cluster: with --kv auto, prompt + max tokens above this goes to the storage-node",
      int("--storage-threshold", 1),
    )
    .option("--memory-capacity <bytes>", "embedded cluster: KV capacity of the memory-node, e.g. 512MiB")
    .option("--storage-buffer <bytes>", "embedded cluster: storage-node streaming buffer, e.g. 64MiB")
    .addOption(
      new Option(
        "--execution-provider <ep>",
        "embedded cluster: onnxruntime execution provider of the gpu-node",
      ).choices(["cpu", "cuda"]),
    )
    .addOption(
      new Option(
        "--wire-dtype <dtype>",
        "embedded cluster: dtype of activations between nodes (logits stay f32)",
      ).choices(["f16", "f32"]),
    )
    .option(
      "--kv-head-groups <n>",
      "embedded cluster: split each sequence's KV heads into this many groups (must divide n_kv_heads)",
      int("--kv-head-groups", 1),
    )
    .option("-v, --verbose", "show the nodes' logs", false);
}

/**
 * Checks `model` and `tokenizer`, then starts the embedded cluster with
 * `flags`' node flags and `coordinator` more coordinator flags.
 * @throws Error naming the file when the model or tokenizer is bad, or as startLocalCluster.
 */
export async function startEmbeddedCluster(
  model: string,
  tokenizer: string,
  flags: EmbeddedClusterFlags,
  more: { signal: AbortSignal; coordinator?: string[]; quiet?: boolean },
): Promise<LocalCluster> {
  const header = await readModelHeader(model);
  await loadModelTokenizer(tokenizer, header.shape.vocabSize);
  if (!more.quiet) process.stderr.write("starting local cluster (coordinator, gpu-, memory- and storage-node)...\n");
  const nodeFlags = (name: string, v: string | number | undefined) => (v === undefined ? [] : [name, String(v)]);
  return startLocalCluster({
    model,
    tokenizer,
    verbose: flags.verbose,
    signal: more.signal,
    flags: {
      coordinator: [
        ...nodeFlags("--storage-threshold", flags.storageThreshold),
        ...nodeFlags("--kv-head-groups", flags.kvHeadGroups),
        ...(more.coordinator ?? []),
      ],
      memory: nodeFlags("--capacity", flags.memoryCapacity),
      storage: nodeFlags("--buffer", flags.storageBuffer),
      gpu: [
        ...nodeFlags("--execution-provider", flags.executionProvider),
        ...nodeFlags("--wire-dtype", flags.wireDtype),
      ],
    },
  });
}
