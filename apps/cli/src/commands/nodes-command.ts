/**
 * `tessera nodes list|add|remove`: a running cluster's nodes, through its coordinator.
 */
import type { Command } from "commander";
import { clusterOption, coordinatorClient, security, withSignals } from "../flags.js";

const impl = () => import("./nodes.js");

/** Adds `tessera nodes` and its subcommands to `program`. */
export function addNodesCommand(program: Command): void {
  const nodes = program.command("nodes").description("List, add or remove a cluster's nodes (default: list).");
  coordinatorClient(nodes.command("list", { isDefault: true }))
    .description("List a cluster's nodes and their health; exit code 1 when any is not SERVING.")
    .addOption(clusterOption())
    .action((o) =>
      withSignals(async () => {
        (await security()).applyTransport(o, "tessera nodes", false);
        return (await impl()).nodesCommand(o.cluster, o.token);
      }),
    );
  coordinatorClient(nodes.command("add"))
    .description(
      "Add a node to a running cluster: running jobs re-plan and place waiting sequences on it; nothing running moves.",
    )
    .argument("<role>", "gpu, memory or storage")
    .argument("<address>", "the node's host:port")
    .addOption(clusterOption())
    .action((role: string, address: string, o) =>
      withSignals(async () => {
        (await security()).applyTransport(o, "tessera nodes add", false);
        return (await impl()).addNodeCommand(o.cluster, role, address, o.token);
      }),
    );
  coordinatorClient(nodes.command("remove"))
    .description(
      "Remove a node from a running cluster: running jobs re-plan and move its sequences (KV rebuilt on other nodes).",
    )
    .argument("<address>", "the node's host:port")
    .addOption(clusterOption())
    .action((address: string, o) =>
      withSignals(async () => {
        (await security()).applyTransport(o, "tessera nodes remove", false);
        return (await impl()).removeNodeCommand(o.cluster, address, o.token);
      }),
    );
}
