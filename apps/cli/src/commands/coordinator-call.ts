import { Coordinator, RpcError, createClient, type Client } from "@tessera/proto";

/**
 * Calls coordinator `cluster` with `fn` on a client of the Coordinator
 * service (with `token`, a bearer token for a coordinator started with
 * --tokens), then closes the client. Resolves what `fn` resolves.
 * @throws Error "coordinator <cluster>: <the refusal>" when a call fails.
 */
export async function withCoordinator<T>(
  cluster: string,
  token: string | undefined,
  fn: (client: Client<typeof Coordinator>) => Promise<T>,
): Promise<T> {
  const client = createClient(Coordinator, cluster, {}, token === undefined ? {} : { token });
  try {
    return await fn(client);
  } catch (err) {
    throw new Error(`coordinator ${cluster}: ${RpcError.from(err).message}`);
  } finally {
    client.close();
  }
}
