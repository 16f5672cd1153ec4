/** Small helpers for tests that call gRPC services and open loopback ports. */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { RpcError, type Code } from "@tessera/proto";

/** Everything a server stream sends until it ends. */
export async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const m of stream) out.push(m);
  return out;
}

/**
 * The gRPC status code a call fails with, and its message.
 * @throws AssertionError when the call succeeds.
 */
export async function failure(p: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await p;
  } catch (err) {
    const e = RpcError.from(err);
    return { code: e.code, message: e.message };
  }
  assert.fail("the call succeeded");
}

/** A loopback port nothing listens on (bound, then released). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}
