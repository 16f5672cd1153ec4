/**
 * Batch jobs (issue 5): `tessera submit|jobs|status|results|cancel|watch` and `tessera jobs delete`, through a coordinator
 * (--cluster, tenants) or straight to NATS JetStream (operators).
 */
import { Option, type Command } from "commander";
import { COORDINATOR_DEFAULTS } from "@tessera/coordinator";
import { coordinatorClient, int, natsAuthFlags, natsPrefix, num, withSignals } from "../flags.js";

const impl = () => import("./jobs.js");

/** Adds the batch job commands to `program`. */
export function addJobCommands(program: Command): void {
  const natsFlags = (c: Command) =>
    natsAuthFlags(coordinatorClient(c))
      .addOption(
        new Option(
          "--cluster <host:port>",
          "a coordinator's job RPCs instead of NATS (how tenants reach jobs: with --token, and TLS or --plaintext)",
        ).env("TESSERA_CLUSTER"),
      )
      .addOption(
        new Option("--nats <servers>", "NATS servers (comma-separated host:port)")
          .default("127.0.0.1:4222")
          .env("TESSERA_NATS"),
      )
      .addOption(natsPrefix());
  natsFlags(
    program
      .command("submit")
      .description(
        "Submit a batch job: a prompts file in Tessera's JSONL or the OpenAI Batch API format (/v1/completions), " +
          "validated before anything is stored; prints the job id. Results come back in the file's format.",
      )
      .argument("<file>", "input JSONL")
      .option("--job-id <id>", "the job's id (letters, digits, _ and -); submitting an existing id returns that job")
      .addOption(new Option("--priority <p>", "queue priority").choices(["high", "normal", "low"]).default("normal"))
      .option("--tenant <name>", "owner of the job")
      .option("--model <name>", "a model the coordinator serves, by name (or its served path; default: its default)")
      .option("--tokenizer <path>", "the served model's own tokenizer path (default: the model's)")
      .addOption(new Option("--format <f>", "input format").choices(["auto", "tessera", "openai"]).default("auto"))
      .option(
        "--max-tokens <n>",
        `most tokens to generate per prompt (default ${COORDINATOR_DEFAULTS.maxTokens})`,
        int("--max-tokens", 1),
      )
      .option("--temperature <t>", "0 = greedy (default)", num("--temperature", 0, 100))
      .option("--top-p <p>", `nucleus sampling threshold (default ${COORDINATOR_DEFAULTS.topP})`, num("--top-p", 0, 1))
      .option("--seed <n>", "sampling seed (default: drawn at submit and kept with the job)", int("--seed", 1)),
  ).action((file: string, o) => withSignals(async () => (await impl()).submitCommand(file, o)));
  const jobs = natsFlags(
    program
      .command("jobs")
      .description("List batch jobs: id, status, priority, progress, submitted.")
      .option("--tenant <name>", "only this tenant's jobs")
      .option("--json", "one JSON job state per line", false),
  ).action((o) => withSignals(async () => (await impl()).jobsCommand(o)));
  jobs
    .command("delete")
    .description(
      "Delete a batch job: its input, results and state (an unfinished one is cancelled first). Takes the flags " +
        "of `tessera jobs` (--cluster, --token, --nats, ...), before or after the id. Ended jobs are also deleted " +
        "by the coordinator's retention (--job-retention, 30 days by default).",
    )
    .argument("<id>", "job id")
    .action((id: string, _o, cmd: Command) =>
      withSignals(async () => (await impl()).deleteCommand(id, cmd.optsWithGlobals())),
    );
  natsFlags(
    program
      .command("status")
      .description("Show a batch job's status and progress (prompts done/total, tokens).")
      .argument("<id>", "job id")
      .option("--json", "the job state as JSON", false),
  ).action((id: string, o) => withSignals(async () => (await impl()).statusCommand(id, o)));
  natsFlags(
    program
      .command("results")
      .description("Write a batch job's results (JSONL, in its input's format) to stdout, as far as they are stored.")
      .argument("<id>", "job id")
      .option("--follow", "keep writing results as they are stored until the job ends", false),
  ).action((id: string, o) => withSignals(async (signal) => (await impl()).resultsCommand(id, o, signal)));
  natsFlags(
    program
      .command("cancel")
      .description("Cancel a batch job: a queued one at once, a running one at its coordinator's next step.")
      .argument("<id>", "job id"),
  ).action((id: string, o) => withSignals(async () => (await impl()).cancelCommand(id, o)));
  natsFlags(
    program
      .command("watch")
      .description(
        "Print a progress line at every change of a batch job until it ends (exit 1 failed, 3 cancelled or " +
          "prompts failed, 0 completed).",
      )
      .argument("<id>", "job id"),
  ).action((id: string, o) => withSignals(async (signal) => (await impl()).watchCommand(id, o, signal)));
}
