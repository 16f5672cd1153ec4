/**
 * The coordinator's per-job plan (job-plan.ts) and its node set
 * (membership.ts): profiles and Info mapped to the cost model's figures,
 * layer ranges in proportion to measured speed, KV shares from the
 * planner, and membership changes announced once each.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, InfoResponseSchema, NodeProfileSchema, type NodeProfile } from "@tessera/proto";
import type { ModelShape } from "@tessera/core";
import { createMemoryNode } from "@tessera/memory-node";
import {
  attentionSpecOf,
  gpuSpecOf,
  planKv,
  planStages,
  Membership,
  type AttentionSurvey,
  type GpuSurvey,
  type MembershipChange,
} from "@tessera/coordinator";

/** A Llama-like shape with 12 layers, dim 512. */
const shape: ModelShape = {
  dim: 512,
  hiddenDim: 1376,
  nLayers: 12,
  nHeads: 8,
  nKvHeads: 8,
  vocabSize: 4096,
  seqLen: 2048,
  headDim: 64,
  ropeTheta: 10000,
  normEps: 1e-5,
};

const gpuProfile = (flops: number, weightBytesPerSecond: number): NodeProfile =>
  create(NodeProfileSchema, {
    role: "gpu",
    figures: {
      case: "gpu",
      value: {
        executionProvider: "cpu",
        flops,
        weightBytesPerSecond,
        weightElementBytes: 4,
        deviceMemoryBytes: 64n << 30n,
      },
    },
  });

const gpu = (address: string, profile?: NodeProfile, pricePerHour = 0): GpuSurvey => ({
  address,
  pricePerHour,
  profile,
  rttS: 1e-4,
});

const memory = (
  address: string,
  pricePerHour: number,
  readBytesPerSecond: number,
  capacityBytes: number,
): AttentionSurvey => ({
  role: "memory",
  address,
  rttS: 1e-4,
  info: create(InfoResponseSchema, {
    role: "memory",
    capacityBytes: BigInt(capacityBytes),
    usedBytes: 0n,
    pricePerHour,
    readBytesPerSecond,
  }),
});

test("gpuSpecOf: a profile's measured figures; unprofiled nodes get equal assumed figures", () => {
  const g = gpuSpecOf(gpu("a:1", gpuProfile(2e11, 3e10), 2.5), 0);
  assert.equal(g.flops, 2e11);
  assert.equal(g.memoryBandwidth, 3e10);
  assert.equal(g.memoryBytes, 64 * 2 ** 30);
  assert.equal(g.pricePerHour, 2.5);
  assert.equal(g.id, "gpu@a:1");
  const u1 = gpuSpecOf(gpu("b:1"), 1);
  const u2 = gpuSpecOf(gpu("c:1"), 2);
  assert.equal(u1.flops, u2.flops);
  assert.equal(u1.memoryBandwidth, u2.memoryBandwidth);
});

test("attentionSpecOf: a memory-node's kernel rate when profiled, else its advertised read bandwidth; room = capacity - used", () => {
  const plain = memory("m:1", 1, 20e9, 1000);
  plain.info.usedBytes = 300n;
  const a = attentionSpecOf(plain);
  assert.equal(a.readBandwidth, 20e9);
  assert.equal(a.capacityBytes, 700);
  assert.equal(a.pricePerHour, 1);
  const profiled = memory("m:2", 1, 20e9, 1000);
  profiled.info.profile = create(NodeProfileSchema, {
    role: "memory",
    figures: { case: "memory", value: { kernelKvBytesPerSecond: 8e9, kernelFlops: 5e10, itemOverheadSeconds: 2e-6 } },
  });
  const b = attentionSpecOf(profiled);
  assert.equal(b.readBandwidth, 8e9);
  assert.equal(b.flops, 5e10);
  assert.equal(b.unitOverheadS, 2e-6);
});

test("planStages: layers in proportion to measured speed; even when a node is unprofiled", () => {
  const w = { batch: 1, promptTokens: 16, outputTokens: 16 };
  // Batch 1 streams weights: a node with 3x the weight bandwidth takes about 3x the layers.
  const fast = planStages(shape, [gpu("a:1", gpuProfile(1e12, 3e10)), gpu("b:1", gpuProfile(1e12, 1e10))], w);
  assert.deepEqual(
    fast.map((r) => r.end - r.start),
    [9, 3],
  );
  assert.equal(fast[0]!.start, 0);
  assert.equal(fast[1]!.end, 12);
  const even = planStages(shape, [gpu("a:1", gpuProfile(1e12, 3e10)), gpu("b:1")], w);
  assert.deepEqual(
    even.map((r) => [r.start, r.end]),
    [
      [0, 6],
      [6, 12],
    ],
  );
});

test("planKv: the planner's shares; a node too small for the batch is left out when using it does not pay", () => {
  const w = { batch: 16, promptTokens: 100, outputTokens: 28 };
  // KV per sequence: 12 layers x 128 positions x 2 x 512 x 4 bytes = 6 MiB.
  const seq = 12 * 128 * 2 * 512 * 4;
  const cheap = memory("cheap:1", 1, 10e9, 5 * seq);
  const dear = memory("dear:1", 3, 10e9, 64 * seq);
  const kv = planKv(shape, [gpu("g:1", gpuProfile(1e11, 1e10))], [cheap, dear], w, 1);
  assert.ok(kv.result.best, kv.result.infeasible);
  const shares = kv.shares!;
  const total = [...shares.values()].reduce((a, v) => a + v, 0);
  assert.equal(total, 16);
  // cheap cannot hold the batch; both cost $4/h for little more speed than dear alone at $3/h.
  assert.deepEqual(
    [...shares.entries()].filter(([, u]) => u > 0),
    [["dear:1", 16]],
  );
  assert.ok(
    kv.result.runnersUp.some((p) => p.summary.includes("cheap:1")),
    "the two-node plan is a runner-up",
  );
  // Equal nodes with room for everything: both used, in equal shares (attention in parallel), all free.
  const a = memory("a:1", 0, 10e9, 64 * seq);
  const b = memory("b:1", 0, 10e9, 64 * seq);
  const even = planKv(shape, [gpu("g:1", gpuProfile(1e11, 1e10))], [a, b], w, 1).shares!;
  assert.deepEqual([even.get("a:1"), even.get("b:1")], [8, 8]);
});

test("Membership: add, remove, lost and back are announced once; refusals name the node", async () => {
  const m = new Membership({ gpu: ["g:1"], memory: ["m:1"], storage: [] }, 50);
  const seen: MembershipChange[] = [];
  m.subscribe((c) => seen.push(c));
  assert.equal(m.add("memory", "m:2"), true);
  assert.equal(m.add("memory", "m:2"), false);
  assert.throws(() => m.add("storage", "m:2"), /already a memory-node/);
  assert.throws(() => m.remove("g:1"), /last gpu-node/);
  assert.throws(() => m.remove("x:1"), /not a node/);
  m.markDown("m:2", "refused");
  m.markDown("m:2", "refused again");
  assert.deepEqual(m.up("memory"), ["m:1"]);
  assert.equal(m.roleOf("m:2"), "memory");
  m.remove("m:2");
  assert.throws(() => m.remove("m:1"), /last attention node/);
  m.close();
  assert.deepEqual(
    seen.map((c) => `${c.kind} ${c.address}`),
    ["joined m:2", "lost m:2", "left m:2"],
  );
});

test("Membership: a node marked lost that answers its health check is announced back, and probing stops", async (t) => {
  const node = createMemoryNode({ port: 0 });
  await node.start();
  t.after(() => node.close());
  const m = new Membership({ gpu: ["g:1"], memory: [node.address], storage: [] }, 50);
  t.after(() => m.close());
  const back = new Promise<MembershipChange>((resolve) =>
    m.subscribe((c) => {
      if (c.kind === "back") resolve(c);
    }),
  );
  m.markDown(node.address, "test");
  assert.equal(m.isDown(node.address), true);
  const c = await back;
  assert.deepEqual([c.role, c.address], ["memory", node.address]);
  assert.equal(m.isDown(node.address), false);
  assert.deepEqual(m.up("memory"), [node.address]);
  // A listener that throws does not stop the others.
  const seen: string[] = [];
  m.subscribe(() => {
    throw new Error("boom");
  });
  m.subscribe((c2) => seen.push(c2.kind));
  m.markDown(node.address, "again");
  assert.deepEqual(seen, ["lost"]);
});
