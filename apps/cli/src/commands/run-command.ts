/**
 * `tessera run`: a batch of prompts on an embedded local cluster or a running one (--cluster).
 */
import { Option, type Command } from "commander";
import { ATTENTION_ROLES } from "@tessera/core";
import { COORDINATOR_DEFAULTS } from "@tessera/coordinator";
import { addEmbeddedClusterFlags } from "../embedded-cluster.js";
import { bundled } from "../paths.js";
import { coordinatorClient, int, num, security, withSignals } from "../flags.js";

const impl = () => import("./run.js");

/** Adds `tessera run` to `program`. */
export function addRunCommand(program: Command): void {
  program
    .command("run")
    .description(
      "Run a batch of prompts and write one JSON object per prompt. Without --cluster, starts an embedded local " +
        "cluster (coordinator + one node of each role as child processes on free loopback ports) and stops it after.",
    )
    .option(
      "--model <path>",
      `llama2.c checkpoint or Hugging Face folder, served by the embedded coordinator (default: ${bundled.model}); ` +
        "with --cluster, the name of a model the coordinator serves (default: its default)",
    )
    .option(
      "--tokenizer <path>",
      "tokenizer.bin or tokenizer.json (default: tok512.bin for the bundled model, tokenizer.json in a Hugging Face folder, else tokenizer.bin beside --model)",
    )
    .option(
      "--prompts <path>",
      'prompts JSONL: {"id", "prompt", optional max_tokens, temperature, top_p, seed, kv} per line',
      bundled.prompts,
    )
    .option("--prompt <text>", 'run this single prompt instead of a file ("" = BOS only)')
    .option("--out <path>", 'results JSONL ("-" = stdout)', "-")
    .option(
      "--max-tokens <n>",
      "most tokens to generate per prompt",
      int("--max-tokens", 1),
      COORDINATOR_DEFAULTS.maxTokens,
    )
    .option("--temperature <t>", "0 = greedy (argmax); > 0 samples as llama2.c run.c", num("--temperature", 0, 100), 0)
    .option(
      "--top-p <p>",
      "nucleus sampling threshold (used when temperature > 0; 0 or 1 = off)",
      num("--top-p", 0, 1),
      COORDINATOR_DEFAULTS.topP,
    )
    .option("--seed <n>", "sampling seed (default: from the clock, printed)", int("--seed", 1))
    .addOption(
      new Option("--kv <where>", "where each sequence's KV cache lives")
        .choices([...ATTENTION_ROLES, "auto"])
        .default("auto"),
    )
    .addOption(
      new Option("--cluster <host:port>", "a running coordinator instead of an embedded cluster").env(
        "TESSERA_CLUSTER",
      ),
    )
    .option("-q, --quiet", "no progress or summary on stderr", false);
  coordinatorClient(addEmbeddedClusterFlags(program.commands.at(-1)!)).action((opts) =>
    withSignals(async (signal) => {
      // The embedded cluster is plaintext on loopback; a --cluster must be told.
      if (opts.cluster) (await security()).applyTransport(opts, "tessera run --cluster", false);
      return (await impl()).runCommand(opts, signal);
    }),
  );
}
