import { Coordinator, RpcError, createClient } from "@tessera/proto";

/** `tessera nodes`: prints each node's role, address and health. Resolves exit code 0, or 1 when any is not SERVING. */
export async function nodesCommand(cluster: string): Promise<number> {
  const client = createClient(Coordinator, cluster);
  try {
    const { nodes } = await client.listNodes({}, { deadline: 10_000 });
    for (const n of nodes) process.stdout.write(`${n.role.padEnd(8)} ${n.address.padEnd(22)} ${n.health}\n`);
    return nodes.every((n) => n.health === "SERVING") ? 0 : 1;
  } catch (err) {
    throw new Error(`coordinator ${cluster}: ${RpcError.from(err).message}`);
  } finally {
    client.close();
  }
}
