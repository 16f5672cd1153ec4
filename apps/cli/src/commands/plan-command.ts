/**
 * `tessera plan [--apply]`: a placement for tokens/s per dollar on a described cluster.
 */
import { Option, type Command } from "commander";
import { int, num, withSignals } from "../flags.js";

const planImpl = () => import("./plan.js");
const planApplyImpl = () => import("./plan-apply.js");

/** Adds `tessera plan` to `program`. */
export function addPlanCommand(program: Command): void {
  program
    .command("plan")
    .description(
      "Plan a model on a described cluster for tokens/s per dollar: layer ranges per gpu-node, where each sequence's " +
        "KV lives, batch size and micro-batches; prints the plan, its predicted figures and the GPU-only and " +
        "GPU + host-offload baselines on the same budget (predictions of a roofline cost model, not measurements).",
    )
    .requiredOption(
      "--cluster <file>",
      "cluster YAML: node pools with kind, count, price and a catalogue part or figures",
    )
    .requiredOption(
      "--model <model>",
      "llama2.c checkpoint, Hugging Face folder, or Llama-2-7B / Llama-2-13B / Llama-2-70B",
    )
    .requiredOption("--batch <n>", "most sequences decoded at once", int("--batch", 1))
    .requiredOption("--prompt-tokens <n>", "prompt length of each sequence", int("--prompt-tokens", 1))
    .requiredOption("--output-tokens <n>", "tokens generated per sequence", int("--output-tokens", 1))
    .option("--latency-ms <n>", "bound on the time between two tokens of a sequence", num("--latency-ms", 0, 1e9))
    .addOption(
      new Option("--objective <o>", "tokens/s of the whole job, or of decode alone (prefill elsewhere)")
        .choices(["job", "decode"])
        .default("job"),
    )
    .option("--json", "machine-readable output", false)
    .option("--apply", "scale the node pools' StatefulSets on Kubernetes to the plan", false)
    .option("--dry-run", "with --apply: print what would change; change nothing", false)
    .option("--kubeconfig <file>", "kubeconfig for --apply (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    .option("--namespace <ns>", "namespace of the StatefulSets (default: the kubeconfig context's)")
    .option("--release <name>", "Helm release (StatefulSets <release>-tessera-<role>-<pool>)", "tessera")
    .option(
      "--statefulset-pattern <p>",
      "StatefulSet name with {release} {fullname} {role} {pool}",
      "{fullname}-{role}-{pool}",
    )
    .action((o) =>
      withSignals(async () => {
        const flags = {
          cluster: o.cluster,
          model: o.model,
          batch: o.batch,
          promptTokens: o.promptTokens,
          outputTokens: o.outputTokens,
          latencyMs: o.latencyMs,
          objective: o.objective,
          json: o.json,
        };
        if (!o.apply) return (await planImpl()).planCommand(flags);
        return (await planApplyImpl()).planApplyCommand({
          ...flags,
          kubeconfig: o.kubeconfig,
          namespace: o.namespace,
          release: o.release,
          statefulSetPattern: o.statefulsetPattern,
          dryRun: o.dryRun,
        });
      }),
    );
}
