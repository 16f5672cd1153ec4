/** What the storage-node's tests share: a data directory and a started node with its client and Attend stream. */
import type { TestContext } from "node:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Attention, createClient } from "@tessera/proto";
import { createStorageNode, type StorageNode, type StorageNodeOptions } from "@tessera/storage-node";
import { openAttend } from "@tessera/testing";

/** A fresh data directory, removed when the test ends. */
export async function tempDataDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-storage-test-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts a node and a client; both are released when the test ends (close() is idempotent). */
export async function startNode(t: TestContext, options: StorageNodeOptions) {
  const node: StorageNode = createStorageNode({ port: 0, ...options });
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  const stream = openAttend(client);
  t.after(() => stream.end());
  return { node, client, stream };
}
