/**
 * Issue 4, "killing a memory-node mid-job or adding one makes the
 * coordinator re-plan without restarting the job": the coordinator's node
 * set changes under a running job (a memory-node SIGKILLed, one added with
 * AddNode, one removed with RemoveNode); the sequences whose KV was on a
 * lost or removed node move to the others and are rebuilt there by
 * prefilling prompt + tokens so far, newcomers use an added node, and every
 * prompt's tokens are those of an undisturbed run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Code, Coordinator, KvPlacement, RpcError, createClient } from "@tessera/proto";
import { parsePromptsJsonl } from "@tessera/core";
import { createMemoryNode } from "@tessera/memory-node";
import { bundled, generate, startInProcessCluster } from "@tessera/testing";
import { startTestCluster, runCli } from "./helpers.js";

const MAX_TOKENS = 160;

async function prompts() {
  return parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8")).map((p) => ({
    id: p.id,
    prompt: p.prompt,
  }));
}

/** Greedy, or sampled (run.c's sampler, seeded: its state must survive a move for the tokens to match). */
const request = async (temperature = 0) => ({
  prompts: await prompts(),
  sampling: { temperature, topP: 0.9, seed: 7n, maxTokens: MAX_TOKENS },
  kv: KvPlacement.MEMORY,
});

/** Completion token ids by prompt id. */
const tokensOf = (out: Awaited<ReturnType<typeof generate>>) =>
  new Map([...out.results].map(([id, r]) => [id, r.completionTokenIds]));

test("a memory-node SIGKILLed mid-decode: its sequences move to the other and finish with undisturbed tokens", async (t) => {
  // Each memory-node has room for 10 of the 16 sequences (stories260K: 1280
  // bytes of KV per position, under 200 positions each), so the plan uses
  // both; after the kill the survivor takes the rest as room frees.
  const capacityBytes = 10 * 200 * 1280;
  const cluster = await startTestCluster({ flags: { memory: ["--capacity", String(capacityBytes)] } });
  const survivor = createMemoryNode({ port: 0, capacityBytes });
  await survivor.start();
  const client = createClient(Coordinator, cluster.address);
  t.after(async () => {
    client.close();
    await cluster.stop();
    await survivor.close();
  });
  const victim = cluster.node("memory").address;
  const req = await request(0.8);
  await client.addNode({ role: "memory", address: survivor.address });
  const calm = await generate(cluster.address, req);
  assert.equal(calm.summary?.errors, 0);
  assert.equal(calm.summary?.plan?.kvShares.length, 2, "the plan uses both memory-nodes");
  let killed = false;
  const stormy = await generate(cluster.address, req, async (ev) => {
    if (!killed && ev.event.case === "progress" && ev.event.value.tokensGenerated > 0n) {
      killed = true;
      await cluster.kill("memory");
    }
  });
  assert.ok(killed, "the job ended before the kill");
  assert.equal(stormy.summary?.errors, 0, [...stormy.results.values()].map((r) => r.error).join("\n"));
  assert.deepEqual(tokensOf(stormy), tokensOf(calm));
  // Every sequence that ran to max_tokens (past the kill) ends on the
  // survivor, including those that were on the victim.
  const long = [...stormy.results.values()].filter((r) => r.completionTokenIds.length === MAX_TOKENS);
  assert.ok(long.length > 0, "no sequence ran past the kill");
  for (const r of long) assert.equal(r.kvNode, `memory@${survivor.address}`, r.id);
  const plan = stormy.summary?.plan;
  assert.ok(plan, "the summary carries the job's last plan");
  assert.ok(plan.revision >= 2, `re-planned (revision ${plan.revision})`);
  assert.match(plan.reason, new RegExp(`memory-node ${victim} lost`));
  assert.ok(plan.movedSequences > 0, "some sequences moved");
  // The survivor alone cannot hold the whole batch at once: the plan shares only it, or finds none fits (placed by load).
  for (const share of plan.kvShares) assert.equal(share.address, survivor.address);
  if (plan.kvShares.length === 0) assert.match(plan.summary, /^no plan fits/);
  const { nodes } = await client.listNodes({});
  assert.equal(nodes.find((n) => n.address === victim)?.health, "UNREACHABLE");
});

test("a memory-node added mid-job takes the sequences that wait for room; one removed gives its sequences back", async (t) => {
  // Room for about four of the 16 sequences (stories260K: 1280 bytes of KV
  // per position, ~30 prompt positions + MAX_TOKENS - 1).
  const small = 4 * (30 + MAX_TOKENS) * 1280;
  const log: string[] = [];
  const { address, memories } = await startInProcessCluster(t, {
    memoryNodes: 1,
    memoryCapacityBytes: small,
    coordinator: { log: (l) => log.push(l) },
  });
  const reference = await startInProcessCluster(t, {});
  const added = createMemoryNode({ port: 0 });
  const removed = createMemoryNode({ port: 0 });
  await Promise.all([added.start(), removed.start()]);
  const client = createClient(Coordinator, address);
  t.after(async () => {
    client.close();
    await Promise.all([added.close(), removed.close()]);
  });
  const req = await request();
  const calm = await generate(reference.address, req);

  let changed = false;
  const out = await generate(address, req, async (ev) => {
    if (!changed && ev.event.case === "progress" && ev.event.value.tokensGenerated > 0n) {
      changed = true;
      await client.addNode({ role: "memory", address: removed.address });
      // Wait until waiting sequences are placed on it, so removing it moves them.
      const placedOn = (a: string) => log.some((l) => l.includes("placed") && l.includes(`memory-node ${a}`));
      for (let i = 0; i < 100 && !placedOn(removed.address); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(placedOn(removed.address), log.join("\n"));
      await client.addNode({ role: "memory", address: added.address });
      await client.removeNode({ address: removed.address });
    }
  });
  assert.ok(changed, "the job ended before the change");
  assert.equal(out.summary?.errors, 0, [...out.results.values()].map((r) => r.error).join("\n"));
  assert.deepEqual(tokensOf(out), tokensOf(calm));
  const where = [...out.results.values()].map((r) => r.kvNode);
  assert.ok(where.includes(`memory@${added.address}`), where.join(" "));
  assert.ok(!where.includes(`memory@${removed.address}`), where.join(" "));
  assert.ok(where.includes(`memory@${memories[0]!.address}`), where.join(" "));
  assert.ok(
    log.some((l) => l.includes(`memory-node ${added.address} joined`)),
    log.join("\n"),
  );
  assert.ok(
    log.some((l) => l.includes(`memory-node ${removed.address} left`)),
    log.join("\n"),
  );
  const moves = log.find((l) => l.includes(`(memory-node ${removed.address} left)`));
  assert.match(moves ?? "", /; [1-9]\d* sequence\(s\) move/, log.join("\n"));
});

test("AddNode and RemoveNode refuse bad requests with the field and node named", async (t) => {
  const { address, gpus, memories } = await startInProcessCluster(t, {});
  const client = createClient(Coordinator, address);
  t.after(() => client.close());
  const code = async (p: Promise<unknown>, want: Code, message: RegExp) =>
    assert.rejects(p, (err: unknown) => {
      const e = RpcError.from(err);
      assert.equal(e.code, want, e.message);
      assert.match(e.message, message);
      return true;
    });
  await code(client.addNode({ role: "tpu", address: "127.0.0.1:1" }), Code.INVALID_ARGUMENT, /^role: /);
  await code(client.addNode({ role: "memory", address: "nowhere" }), Code.INVALID_ARGUMENT, /^address: "nowhere"/);
  await code(client.addNode({ role: "memory", address: "127.0.0.1:1" }), Code.UNAVAILABLE, /127\.0\.0\.1:1/);
  await code(client.addNode({ role: "memory", address: gpus[0]!.address }), Code.UNAVAILABLE, /health check/);
  await code(client.removeNode({ address: "127.0.0.1:1" }), Code.NOT_FOUND, /not a node of this cluster/);
  await code(client.removeNode({ address: gpus[0]!.address }), Code.FAILED_PRECONDITION, /last gpu-node/);
  await code(client.removeNode({ address: memories[0]!.address }), Code.FAILED_PRECONDITION, /last attention node/);
  // Adding a member again changes nothing.
  await client.addNode({ role: "memory", address: memories[0]!.address });
  const { nodes } = await client.listNodes({});
  assert.equal(nodes.filter((n) => n.address === memories[0]!.address).length, 1);
});

test("tessera nodes add / remove / list drive a running coordinator", async (t) => {
  const { address } = await startInProcessCluster(t, {});
  const extra = createMemoryNode({ port: 0 });
  await extra.start();
  t.after(() => extra.close());
  const add = await runCli(["nodes", "add", "memory", extra.address, "--cluster", address, "--plaintext"]);
  assert.equal(add.code, 0, add.stderr);
  assert.match(add.stdout, new RegExp(`memory-node ${extra.address} added`));
  const list = await runCli(["nodes", "--cluster", address, "--plaintext"]);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, new RegExp(`memory +${extra.address.replace(/\./g, "\\.")} +SERVING`));
  const bad = await runCli(["nodes", "add", "tpu", extra.address, "--cluster", address, "--plaintext"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /role: must be gpu, memory or storage/);
  const remove = await runCli(["nodes", "remove", extra.address, "--cluster", address, "--plaintext"]);
  assert.equal(remove.code, 0, remove.stderr);
  const after = await runCli(["nodes", "list", "--cluster", address, "--plaintext"]);
  assert.ok(!after.stdout.includes(extra.address), after.stdout);
});
