/**
 * `tessera models`: the models a running cluster's coordinator serves.
 */
import type { Command } from "commander";
import { clusterOption, coordinatorClient, security, withSignals } from "../flags.js";

const impl = () => import("./models.js");

/** Adds `tessera models` to `program`. */
export function addModelsCommand(program: Command): void {
  coordinatorClient(program.command("models"))
    .description(
      "List the models a cluster's coordinator serves (the names requests and jobs take), the default first, " +
        "with their KV placement; paths only for an admin's token.",
    )
    .addOption(clusterOption())
    .option("--json", "a JSON array of {name, default, kv, modelPath, tokenizerPath}", false)
    .action((o) =>
      withSignals(async () => {
        (await security()).applyTransport(o, "tessera models", false);
        return (await impl()).modelsCommand(o.cluster, o.token, o.json);
      }),
    );
}
