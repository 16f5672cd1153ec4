import { withCoordinator } from "./coordinator-call.js";

/**
 * `tessera nodes`: with `token`, a bearer token for a coordinator started
 * with --tokens (adding and removing nodes needs an admin's). Prints each node's role, address and health. Resolves exit code 0, or 1 when any is not SERVING. */
export async function nodesCommand(cluster: string, token?: string): Promise<number> {
  return withCoordinator(cluster, token, async (client) => {
    const { nodes } = await client.listNodes({}, { deadline: 10_000 });
    for (const n of nodes) process.stdout.write(`${n.role.padEnd(8)} ${n.address.padEnd(22)} ${n.health}\n`);
    return nodes.every((n) => n.health === "SERVING") ? 0 : 1;
  });
}

/**
 * `tessera nodes add ROLE ADDRESS`: adds a node to a running cluster
 * (Coordinator.AddNode). Resolves exit code 0.
 * @throws Error naming the coordinator and the refusal (bad role or address, node not answering).
 */
export async function addNodeCommand(cluster: string, role: string, address: string, token?: string): Promise<number> {
  return withCoordinator(cluster, token, async (client) => {
    await client.addNode({ role, address }, { deadline: 30_000 });
    process.stdout.write(`${role}-node ${address} added to ${cluster}\n`);
    return 0;
  });
}

/**
 * `tessera nodes remove ADDRESS`: removes a node from a running cluster
 * (Coordinator.RemoveNode); its sequences move. Resolves exit code 0.
 * @throws Error naming the coordinator and the refusal (unknown node, last of its kind).
 */
export async function removeNodeCommand(cluster: string, address: string, token?: string): Promise<number> {
  return withCoordinator(cluster, token, async (client) => {
    await client.removeNode({ address }, { deadline: 30_000 });
    process.stdout.write(`node ${address} removed from ${cluster}\n`);
    return 0;
  });
}
