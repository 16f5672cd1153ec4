// The planner's building blocks on hand-checked cases, and property tests
// (seeded random clusters and workloads) that no returned plan breaks a
// capacity or the latency bound.
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import type { ModelShape } from "@tessera/core";
import {
  RUNNABLE_KV_MODES,
  SHAPES,
  assignKv,
  loadCluster,
  plan,
  predict,
  resolveCluster,
  splitLayers,
  type AttentionSpec,
  type Plan,
  type PlanRequest,
} from "@tessera/scheduler";

/** mulberry32: a small seeded PRNG in [0, 1). */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("splitLayers: in proportion to speed, then moved off nodes out of memory", () => {
  // Node 0 twice as fast as node 1: 20 and 10 of 30 layers.
  assert.deepEqual(splitLayers(30, [1, 2], 1, [0, 0], [100, 100]), [20, 10]);
  // Node 0 holds at most 15 layers: the rest moves to node 1.
  assert.deepEqual(splitLayers(30, [1, 2], 1, [0, 0], [15, 100]), [15, 15]);
  // 30 layers cannot fit in 25 layers of memory.
  assert.equal(splitLayers(30, [1, 1], 1, [0, 0], [10, 15]), undefined);
  // A node so slow it would get no layer: none of this split.
  assert.equal(splitLayers(4, [1, 1000], 1, [0, 0], [100, 100]), undefined);
});

const attn = (id: string, bw: number, cap: number): AttentionSpec => ({
  kind: "memory",
  id,
  pool: "m",
  pricePerHour: 1,
  readBandwidth: bw,
  writeBandwidth: bw,
  bandwidthEfficiency: 1,
  capacityBytes: cap,
  flops: 1e12,
  flopsEfficiency: 1,
  link: { bandwidth: 1e10, sustainedFraction: 1, rttS: 0 },
});

test("assignKv: by bandwidth, within capacity, head groups of a sequence on distinct nodes", () => {
  const shares = assignKv([attn("a", 30, 100), attn("b", 10, 100)], 8, 1, 1)!;
  assert.deepEqual(
    shares.map((s) => s.units),
    [6, 2],
  );
  // Capacity 3 units on a: the rest spills to b.
  assert.deepEqual(
    assignKv([attn("a", 30, 3), attn("b", 10, 100)], 8, 1, 1)!.map((s) => s.units),
    [3, 5],
  );
  // Two groups per sequence on two nodes: every sequence puts one group on each.
  assert.deepEqual(
    assignKv([attn("a", 30, 100), attn("b", 10, 100)], 4, 2, 1)!.map((s) => s.units),
    [4, 4],
  );
  assert.equal(assignKv([attn("a", 1, 2)], 3, 1, 1), undefined);
  assert.equal(assignKv([attn("a", 1, 100)], 1, 2, 1), undefined);
});

test("plan: Llama-2-70B at 4K on H100s puts the KV on memory-nodes and reports baselines on its budget", () => {
  const cluster = resolveCluster("t.yaml", {
    pools: [
      { name: "gpu", kind: "gpu", count: 4, part: "h100-sxm-80gb" },
      { name: "mem", kind: "memory", count: 2, part: "ddr5-4800-8ch" },
    ],
  });
  const r = plan(SHAPES["Llama-2-70B"]!.shape, cluster, { maxBatch: 16, promptTokens: 3584, outputTokens: 512 });
  assert.ok(r.best);
  // 138 GB of bf16 weights need at least two 80 GB GPUs.
  assert.ok(r.best.placement.stages.length >= 2);
  assert.equal(r.best.placement.kv.mode, "nodes");
  const gpuOnly = r.baselines.find((b) => b.name === "gpu-only")!;
  const offload = r.baselines.find((b) => b.name === "gpu+host-offload")!;
  assert.ok(gpuOnly.plan && offload.plan);
  const ratio = r.best.tokensPerSecondPerDollarHour / gpuOnly.plan.tokensPerSecondPerDollarHour;
  assert.ok(Math.abs(gpuOnly.ratio! - ratio) < 1e-12);
  // Reading KV over PCIe is slower than from HBM.
  assert.ok(offload.plan.prediction.decodeStepS > gpuOnly.plan.prediction.decodeStepS);
});

test("plan: a latency bound is respected and named when it binds", () => {
  const cluster = resolveCluster("t.yaml", {
    pools: [
      { name: "gpu", kind: "gpu", count: 2, part: "a100-sxm-80gb" },
      { name: "mem", kind: "memory", count: 2, part: "ddr5-4800-8ch" },
    ],
  });
  const shape = SHAPES["Llama-2-7B"]!.shape;
  const free = plan(shape, cluster, { maxBatch: 64, promptTokens: 1000, outputTokens: 100 });
  const bound = free.best!.prediction.perTokenLatencyS * 0.7;
  const r = plan(shape, cluster, { maxBatch: 64, promptTokens: 1000, outputTokens: 100, latencyS: bound });
  assert.ok(r.best);
  assert.ok(r.best.prediction.perTokenLatencyS <= bound);
  assert.match(r.bindingConstraint, /^latency bound/);
});

test("plan: nothing fits → no plan, with the reason", () => {
  const cluster = resolveCluster("t.yaml", {
    pools: [
      { name: "gpu", kind: "gpu", count: 1, part: "l4" },
      { name: "mem", kind: "memory", count: 1, part: "ddr5-4800-8ch" },
    ],
  });
  const r = plan(SHAPES["Llama-2-70B"]!.shape, cluster, { maxBatch: 1, promptTokens: 100, outputTokens: 10 });
  assert.equal(r.best, undefined);
  assert.match(r.infeasible!, /gpu memory/);
});

function checkPlan(shape: ModelShape, p: Plan, req: PlanRequest, what: string) {
  // Recompute from scratch: a plan's own prediction could be stale.
  const again = predict(shape, p.workload, p.placement);
  assert.deepEqual(again.violations, [], `${what}: ${p.summary}`);
  for (const m of again.memory) assert.ok(m.usedBytes <= m.capacityBytes, `${what}: ${m.id} ${m.kind} over capacity`);
  if (req.latencyS !== undefined) assert.ok(again.perTokenLatencyS <= req.latencyS, `${what}: latency`);
  assert.ok(p.workload.batch <= req.maxBatch, `${what}: batch`);
  assert.ok(p.placement.microBatches <= p.workload.batch, `${what}: micro-batches`);
  if (p.placement.kv.mode === "nodes")
    for (const s of p.placement.kv.shares) assert.ok(s.units > 0, `${what}: idle attention node ${s.node.id}`);
}

test("property: no returned plan (best, runners-up, baselines) breaks a capacity or the latency bound", () => {
  const next = rng(20260421);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  const shapes = [
    SHAPES["Llama-2-7B"]!.shape,
    SHAPES["Llama-2-13B"]!.shape,
    SHAPES["Llama-2-70B"]!.shape,
    { ...SHAPES["Llama-2-7B"]!.shape, nLayers: 4, nKvHeads: 8 },
  ];
  let plans = 0;
  let none = 0;
  for (let trial = 0; trial < 40; trial++) {
    const shape = pick(shapes);
    const pools: unknown[] = [
      {
        name: "g",
        kind: "gpu",
        count: 1 + Math.floor(next() * 4),
        part: pick(["h100-sxm-80gb", "a100-sxm-80gb", "l4"]),
        memory: `${Math.round(8 + next() * 80)}GB`,
      },
    ];
    if (next() < 0.5) pools.push({ name: "g2", kind: "gpu", count: 1 + Math.floor(next() * 2), part: "l4" });
    // At least one attention pool: Tessera keeps no KV on gpu-nodes.
    const storage = next() < 0.5;
    if (!storage || next() < 0.7)
      pools.push({
        name: "m",
        kind: "memory",
        count: 1 + Math.floor(next() * 3),
        part: "ddr5-4800-8ch",
        capacity: `${Math.round(1 + next() * 300)}GB`,
        price: Math.round(next() * 400) / 100,
      });
    if (storage)
      pools.push({
        name: "s",
        kind: "storage",
        count: 1 + Math.floor(next() * 2),
        part: "nvme-gen4-pm9a3",
        drives: 1 + Math.floor(next() * 4),
        capacity: `${Math.round(1 + next() * 500)}GB`,
      });
    const cluster = resolveCluster(`trial-${trial}.yaml`, { pools });
    const req: PlanRequest = {
      maxBatch: 1 + Math.floor(next() * 64),
      promptTokens: 1 + Math.floor(next() * 60000),
      outputTokens: 1 + Math.floor(next() * 2000),
      objective: pick(["job", "decode"] as const),
      ...(next() < 0.4 ? { latencyS: 0.01 + next() * 0.5 } : {}),
    };
    const r = plan(shape, cluster, req);
    if (!r.best) {
      none++;
      assert.ok(r.infeasible, `trial ${trial}: no plan and no reason`);
      continue;
    }
    for (const p of [r.best, ...r.runnersUp]) {
      checkPlan(shape, p, req, `trial ${trial}`);
      assert.ok(RUNNABLE_KV_MODES.includes(p.placement.kv.mode), `trial ${trial}: ${p.summary} is not runnable`);
    }
    for (const b of r.baselines) if (b.plan) checkPlan(shape, b.plan, req, `trial ${trial} ${b.name}`);
    for (const p of r.runnersUp)
      assert.ok(p.tokensPerSecondPerDollarHour <= r.best.tokensPerSecondPerDollarHour, `trial ${trial}: order`);
    plans++;
  }
  // The generator must exercise both outcomes, or the property proves little.
  assert.ok(plans >= 10 && none >= 1, `plans ${plans}, none ${none}`);
});

test("plan: on every bundled example cluster (the H100 ones too) each offered plan keeps its KV on memory- or storage-nodes; none is GPU-only", async () => {
  const dir = new URL("../../../examples/clusters/", import.meta.url);
  const files = (await readdir(dir)).filter((f) => f.endsWith(".yaml"));
  assert.ok(files.includes("h100-ddr5-nvme.yaml"), files.join(", "));
  const workloads: PlanRequest[] = [
    { maxBatch: 16, promptTokens: 3584, outputTokens: 512 },
    { maxBatch: 64, promptTokens: 512, outputTokens: 128, objective: "decode" },
    { maxBatch: 4, promptTokens: 30000, outputTokens: 1000, latencyS: 0.2 },
  ];
  for (const f of files) {
    const cluster = await loadCluster(fileURLToPath(new URL(f, dir)));
    for (const model of ["Llama-2-7B", "Llama-2-70B"]) {
      for (const req of workloads) {
        const r = plan(SHAPES[model]!.shape, cluster, req);
        for (const p of [...(r.best ? [r.best] : []), ...r.runnersUp]) {
          const what = `${f} ${model} ${JSON.stringify(req)}: ${p.summary}`;
          assert.equal(p.placement.kv.mode, "nodes", what);
          if (p.placement.kv.mode === "nodes") assert.ok(p.placement.kv.shares.length > 0, what);
          assert.doesNotMatch(p.summary, /KV in (GPU|host) memory/, what);
        }
      }
    }
  }
});
