/**
 * Bad input of issue 2: an unreachable node is named by role and address,
 * and only what needs it fails.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { Code, Coordinator, KvPlacement, RpcError, createClient } from "@tessera/proto";
import { generate, startInProcessCluster } from "@tessera/testing";

/** A loopback port nothing listens on (bound, then released). */
async function deadAddress(): Promise<string> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return `127.0.0.1:${port}`;
}

test("an unreachable gpu-node fails the job with its role and address", async (t) => {
  const dead = await deadAddress();
  const { coordinator } = await startInProcessCluster(t, {
    gpuNodes: 0,
    coordinator: { gpuNodes: [dead], connectTimeoutMs: 1000 },
  });
  await assert.rejects(
    generate(coordinator.address, { prompts: [{ id: "a", prompt: "Hi" }], sampling: { maxTokens: 4 } }),
    (err: unknown) => {
      const e = RpcError.from(err);
      assert.equal(e.code, Code.UNAVAILABLE);
      assert.match(e.message, new RegExp(`gpu-node at ${dead} is unreachable`));
      return true;
    },
  );
});

test("an unreachable memory-node is marked lost at job start: the prompts go to the live one", async (t) => {
  const dead = await deadAddress();
  const log: string[] = [];
  const { coordinator, memories } = await startInProcessCluster(t, {
    coordinator: ({ memories }) => ({
      memoryNodes: [memories[0]!.address, dead],
      connectTimeoutMs: 1000,
      log: (line) => log.push(line),
    }),
  });
  const memory = memories[0]!;
  // Two prompts of equal length: with both nodes up, the least-loaded placement would put one on each.
  const out = await generate(coordinator.address, {
    prompts: [
      { id: "a", prompt: "The cat" },
      { id: "b", prompt: "The dog" },
    ],
    sampling: { temperature: 0, maxTokens: 8 },
    kv: KvPlacement.MEMORY,
  });
  for (const id of ["a", "b"]) {
    const r = out.results.get(id)!;
    assert.equal(r.error, "");
    assert.equal(r.kvNode, `memory@${memory.address}`);
    assert.equal(r.completionTokenIds.length, 8);
  }
  assert.ok(
    log.some((l) => l.includes(`memory-node ${dead}: no answer`) && l.includes("marked lost")),
    log.join("\n"),
  );
  const client = createClient(Coordinator, coordinator.address);
  t.after(() => client.close());
  const { nodes } = await client.listNodes({});
  assert.equal(nodes.find((n) => n.address === dead)?.health, "UNREACHABLE");
});

test("an attention node lost mid-decode fails only its own sequences; the rest finish with their solo tokens", async (t) => {
  const { coordinator, memories } = await startInProcessCluster(t, {
    storageNodes: 1,
    coordinator: { retryTimeoutMs: 1000 },
  });
  const memory = memories[0]!;
  const prompts = [
    { id: "on-memory", prompt: "", kv: KvPlacement.MEMORY },
    { id: "on-storage", prompt: "", kv: KvPlacement.STORAGE },
  ];
  const solo = await generate(coordinator.address, {
    prompts: [prompts[1]!],
    sampling: { temperature: 0, maxTokens: 256 },
  });
  let closed = false;
  const out = await generate(
    coordinator.address,
    { prompts, sampling: { temperature: 0, maxTokens: 256 } },
    async (ev) => {
      if (!closed && ev.event.case === "progress" && ev.event.value.tokensGenerated > 0n) {
        closed = true;
        await memory.close();
      }
    },
  );
  assert.ok(closed);
  const lost = out.results.get("on-memory")!;
  assert.equal(lost.finishReason, "error");
  assert.match(lost.error, new RegExp(`^memory-node ${memory.address}: .*gave up after`));
  const kept = out.results.get("on-storage")!;
  assert.equal(kept.error, "");
  assert.deepEqual(kept.completionTokenIds, solo.results.get("on-storage")!.completionTokenIds);
});
