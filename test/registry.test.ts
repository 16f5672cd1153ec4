/**
 * Issue 5, item 1: the node registry over NATS JetStream, with real node
 * processes and the real NATS server on 127.0.0.1:4222. Nodes started with
 * `--nats` register (price, profile) and heartbeat; a coordinator given no
 * node addresses takes them from the registry and runs jobs with the tokens
 * of a coordinator given the addresses; a memory-node SIGKILLed mid-job (no
 * deregister) is reported lost when its heartbeats stop and its sequences
 * move to the other memory-node with undisturbed tokens; a node stopped
 * with SIGTERM deregisters ("left"); an unreachable server or a clashing
 * bucket name gives errors naming the servers and the bucket.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { ConfigError, parsePromptsJsonl, type NodeRole } from "@tessera/core";
import { Membership, compileCoordinatorOptions, createCoordinator, type MembershipChange } from "@tessera/coordinator";
import { createMemoryNode } from "@tessera/memory-node";
import {
  NatsError,
  connectNats,
  registryBucket,
  registryKey,
  watchRegistry,
  withRegistration,
  type NodeRecord,
  type RegistryEvent,
} from "@tessera/nats";
import { Coordinator, KvPlacement, createClient } from "@tessera/proto";
import { bundled, generate } from "@tessera/testing";
import { startTestCluster, runCli } from "./helpers.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const MAX_TOKENS = 160;

/** A fresh prefix; its registry bucket is deleted after the test (registered last, so it runs after the cluster stops). */
async function natsPrefix(t: TestContext): Promise<{ prefix: string; kv: Awaited<ReturnType<Kvm["create"]>> }> {
  const prefix = `t${randomBytes(5).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "registry-test" });
  const kv = await new Kvm(nc).create(registryBucket(prefix), { history: 1 });
  t.after(async () => {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  return { prefix, kv };
}

async function request(temperature: number) {
  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"));
  return {
    prompts: prompts.map((p) => ({ id: p.id, prompt: p.prompt })),
    sampling: { temperature, topP: 0.9, seed: 7n, maxTokens: MAX_TOKENS },
    kv: KvPlacement.MEMORY,
  };
}

/** Completion token ids by prompt id. */
const tokensOf = (out: Awaited<ReturnType<typeof generate>>) =>
  new Map([...out.results].map(([id, r]) => [id, r.completionTokenIds]));

/** Waits until `cond()` holds, polling every 50 ms. @throws naming `what` after `ms`. */
async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("nodes register and heartbeat; a coordinator with only --nats runs jobs like one given the addresses; SIGTERM deregisters", async (t) => {
  const { prefix, kv } = await natsPrefix(t);
  const cluster = await startTestCluster({
    nats: { servers: SERVERS, prefix },
    // The memory-node measures its profile (about a second) and has a price: both go into its record.
    flags: { memory: ["--profile", "measure", "--price", "0.25"] },
  });
  t.after(() => cluster.stop());
  const gpu = cluster.node("gpu").address;
  const memory = cluster.node("memory").address;
  const storage = cluster.node("storage").address;

  // The records: one per node, under role.address, with price and profile.
  const record = async (role: NodeRole, address: string) => {
    const e = await kv.get(registryKey(role, address));
    assert.equal(e?.operation, "PUT", `${role}-node ${address} is registered`);
    return e.json<NodeRecord>();
  };
  const mem = await record("memory", memory);
  assert.equal(mem.role, "memory");
  assert.equal(mem.address, memory);
  assert.equal(mem.pricePerHour, 0.25);
  const profile = mem.profile as { role?: string; pricePerHour?: number; memory?: { readBytesPerSecond?: number } };
  assert.equal(profile.role, "memory");
  assert.equal(profile.pricePerHour, 0.25);
  assert.ok((profile.memory?.readBytesPerSecond ?? 0) > 0, JSON.stringify(profile));
  const g = await record("gpu", gpu);
  assert.equal(g.profile, undefined, "--profile off: no profile in the record");
  assert.equal(g.pricePerHour, 0);
  await record("storage", storage);
  // Heartbeats: heartbeatAt moves on, nodeId and startedAt do not.
  await until("a heartbeat of the gpu-node", async () => (await record("gpu", gpu)).heartbeatAt !== g.heartbeatAt);
  const g2 = await record("gpu", gpu);
  assert.equal(g2.nodeId, g.nodeId);
  assert.equal(g2.startedAt, g.startedAt);
  assert.ok(Date.parse(g2.heartbeatAt) > Date.parse(g.heartbeatAt));

  // The coordinator was given no addresses: its nodes are the registered ones.
  const client = createClient(Coordinator, cluster.address);
  t.after(() => client.close());
  const listed = (await client.listNodes({})).nodes.map((n) => `${n.role} ${n.address} ${n.health}`).sort();
  assert.deepEqual(listed, [`gpu ${gpu} SERVING`, `memory ${memory} SERVING`, `storage ${storage} SERVING`]);

  // Same tokens as a coordinator given the addresses.
  const req = await request(0.8);
  const viaRegistry = await generate(cluster.address, req);
  assert.equal(viaRegistry.summary?.errors, 0, [...viaRegistry.results.values()].map((r) => r.error).join("\n"));
  const direct = createCoordinator({
    port: 0,
    gpuNodes: [gpu],
    memoryNodes: [memory],
    storageNodes: [storage],
    modelPath: bundled.model,
    tokenizerPath: bundled.tokenizer,
    log: () => {},
  });
  await direct.start();
  t.after(() => direct.close());
  const viaAddresses = await generate(direct.address, req);
  assert.equal(viaRegistry.results.size, req.prompts.length);
  assert.deepEqual(tokensOf(viaRegistry), tokensOf(viaAddresses));

  // SIGTERM: the storage-node deregisters before it stops; the coordinator sees it leave.
  const p = cluster.node("storage");
  p.child.kill("SIGTERM");
  await new Promise((r) => p.child.once("exit", r));
  assert.match(
    p.logTail(),
    new RegExp(`deregistered storage\\.${storage.replace(/[.:]/g, (c) => (c === ":" ? "_" : "\\."))}`),
  );
  assert.equal((await kv.get(registryKey("storage", storage)))?.operation, "DEL");
  await until("the coordinator to see the storage-node leave", () =>
    cluster.node("coordinator").logTail().includes(`storage-node ${storage} left (registry: deregistered)`),
  );
  const after = (await client.listNodes({})).nodes.map((n) => n.address);
  assert.ok(!after.includes(storage), after.join(" "));
  assert.ok(!cluster.node("coordinator").logTail().includes(" lost "), cluster.node("coordinator").logTail());
});

test("a memory-node SIGKILLed mid-job is lost when its heartbeats stop; its sequences move with undisturbed tokens", async (t) => {
  const { prefix, kv } = await natsPrefix(t);
  const lostAfterMs = 3000;
  // Each memory-node has room for 10 of the 16 sequences (stories260K:
  // 1280 bytes of KV per position, under 200 positions each), so the plan
  // uses both. --failover is long: only the registry can find the victim lost.
  const capacityBytes = 10 * 200 * 1280;
  const cluster = await startTestCluster({
    nats: { servers: SERVERS, prefix },
    flags: {
      memory: ["--capacity", String(capacityBytes)],
      coordinator: ["--failover", "600000", "--node-lost-after", String(lostAfterMs)],
    },
  });
  // The second memory-node, in this process, registered like a node process.
  const survivorNode = createMemoryNode({ port: 0, capacityBytes });
  const survivor = withRegistration(
    survivorNode,
    "memory",
    { nats: SERVERS, natsPrefix: prefix },
    async () => ({ pricePerHour: 0 }),
    () => {},
  );
  await survivor.start();
  t.after(() => survivor.close());
  t.after(() => cluster.stop());
  const victim = cluster.node("memory").address;
  const coordinatorLog = () => cluster.node("coordinator").logTail();
  await until("the coordinator to see the survivor join", () =>
    coordinatorLog().includes(`memory-node ${survivor.address} joined`),
  );
  // A watcher of our own times the lost report.
  const events: { e: RegistryEvent; at: number }[] = [];
  const watcher = await watchRegistry({
    nats: SERVERS,
    prefix,
    lostAfterMs,
    onEvent: (e) => events.push({ e, at: Date.now() }),
    log: () => {},
  });
  t.after(() => watcher.stop());

  const req = await request(0.8);
  const calm = await generate(cluster.address, req);
  assert.equal(calm.summary?.errors, 0);
  assert.equal(calm.summary?.plan?.kvShares.length, 2, "the plan uses both memory-nodes");
  let killedAt = 0;
  const stormy = await generate(cluster.address, req, async (ev) => {
    if (!killedAt && ev.event.case === "progress" && ev.event.value.tokensGenerated > 0n) {
      killedAt = Date.now();
      await cluster.kill("memory");
    }
  });
  assert.ok(killedAt, "the job ended before the kill");
  assert.equal(stormy.summary?.errors, 0, [...stormy.results.values()].map((r) => r.error).join("\n"));
  assert.deepEqual(tokensOf(stormy), tokensOf(calm));

  // SIGKILL: no deregister, the record stays; the registry reports it lost.
  assert.equal((await kv.get(registryKey("memory", victim)))?.operation, "PUT");
  const lost = events.find((x) => x.e.kind === "lost" && x.e.address === victim);
  assert.ok(lost, JSON.stringify(events.map((x) => [x.e.kind, x.e.address])));
  assert.ok(!events.some((x) => x.e.kind === "left"), "a SIGKILLed node does not leave");
  t.diagnostic(`lost reported ${lost.at - killedAt} ms after the kill (lostAfterMs ${lostAfterMs}): ${lost.e.reason}`);
  assert.match(coordinatorLog(), new RegExp(`memory-node ${victim} lost \\(registry: no heartbeat for \\d+ ms`));
  const plan = stormy.summary?.plan;
  assert.ok(plan && plan.revision >= 2, `re-planned (revision ${plan?.revision})`);
  assert.match(plan.reason, new RegExp(`memory-node ${victim} lost \\(registry: no heartbeat`));
  assert.ok(plan.movedSequences > 0, "some sequences moved");
  const long = [...stormy.results.values()].filter((r) => r.completionTokenIds.length === MAX_TOKENS);
  assert.ok(long.length > 0, "no sequence ran past the kill");
  for (const r of long) assert.equal(r.kvNode, `memory@${survivor.address}`, r.id);
});

test("unreachable NATS and a clashing registry bucket fail with the servers and the bucket named", async (t) => {
  const coordinator = createCoordinator({ port: 0, nats: "127.0.0.1:1", log: () => {} });
  await assert.rejects(
    coordinator.start(),
    (e: unknown) => e instanceof NatsError && /^NATS at 127\.0\.0\.1:1: cannot connect/.test(e.message),
  );
  // No TESSERA_NATS* from the environment: the flags here say all.
  const env = { ...process.env, TESSERA_NATS: undefined, TESSERA_NATS_PREFIX: undefined };
  const node = await runCli(
    ["node", "memory", "--plaintext", "--port", "0", "--profile", "off", "--nats", "127.0.0.1:1"],
    {
      env,
      timeoutMs: 60_000,
    },
  );
  assert.notEqual(node.code, 0);
  assert.match(node.stderr, /NATS at 127\.0\.0\.1:1: cannot connect/);
  const noNodes = await runCli(["coordinator", "--plaintext", "--port", "0"], { env, timeoutMs: 60_000 });
  assert.notEqual(noNodes.code, 0);
  assert.match(noNodes.stderr, /gpuNodes: at least one gpu-node address is needed \(or give nats/);

  // A stream with the registry bucket's stream name that is not a key-value bucket.
  const prefix = `t${randomBytes(5).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "registry-test" });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: `KV_${registryBucket(prefix)}`, subjects: [`${prefix}.elsewhere`] });
  t.after(async () => {
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  const clash = createCoordinator({ port: 0, nats: SERVERS, natsPrefix: prefix, log: () => {} });
  await assert.rejects(clash.start(), (e: unknown) => {
    assert.ok(e instanceof NatsError, String(e));
    assert.match(
      e.message,
      new RegExp(`^NATS at ${SERVERS.replace(/\./g, "\\.")}: node registry bucket "${prefix}-nodes"`),
    );
    assert.match(e.message, /is not a key-value bucket/);
    return true;
  });
  const memoryNode = createMemoryNode({ port: 0 });
  const registered = withRegistration(memoryNode, "memory", { nats: SERVERS, natsPrefix: prefix }, async () => ({
    pricePerHour: 0,
  }));
  await assert.rejects(registered.start(), /not a key-value bucket/);
  assert.equal(memoryNode.state, "closed", "a node that cannot register is closed");
});

test("options: with nats, node addresses are optional; Membership.markUp announces back once", () => {
  const o = compileCoordinatorOptions({ nats: "127.0.0.1:4222" });
  assert.deepEqual(
    [o.nats, o.natsPrefix, o.nodeHeartbeatMs, o.nodeLostAfterMs],
    ["127.0.0.1:4222", "tessera", 1000, 3000],
  );
  assert.deepEqual([o.gpuNodes, o.memoryNodes, o.storageNodes], [[], [], []]);
  assert.equal(compileCoordinatorOptions({ nats: "n:4222", nodeHeartbeatMs: 200 }).nodeLostAfterMs, 600);
  assert.throws(
    () => compileCoordinatorOptions({ nats: "n:4222", natsPrefix: "a.b" }),
    (e: unknown) => e instanceof ConfigError && e.option === "natsPrefix",
  );
  assert.throws(
    () => compileCoordinatorOptions({ memoryNodes: ["a:1"] }),
    /gpuNodes: at least one gpu-node address is needed \(or give nats/,
  );

  const m = new Membership({ gpu: ["g:1"], memory: ["m:1"], storage: [] });
  const seen: string[] = [];
  m.subscribe((c: MembershipChange) => seen.push(`${c.kind} ${c.address} ${c.reason}`));
  assert.equal(m.markUp("m:1", "x"), false, "not down: nothing to announce");
  m.markDown("m:1", "registry: no heartbeat");
  assert.deepEqual(m.up("memory"), []);
  assert.equal(m.markUp("m:1", "registry: heartbeats again"), true);
  assert.equal(m.markUp("m:1", "again"), false);
  assert.deepEqual(m.up("memory"), ["m:1"]);
  assert.ok(m.add("memory", "m:2", "registry: registered"));
  m.remove("m:2", "registry: deregistered");
  m.close();
  assert.deepEqual(seen, [
    "lost m:1 registry: no heartbeat",
    "back m:1 registry: heartbeats again",
    "joined m:2 registry: registered",
    "left m:2 registry: deregistered",
  ]);
});
