/**
 * Issue 4: the coordinator plans every job with the scheduler's planner from
 * the nodes' own profiles. Two gpu-nodes advertising different measured
 * speeds get layer ranges in proportion (the faster one more), the plan is
 * streamed to the client and kept in the summary, and the tokens are those
 * of one gpu-node holding every layer.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, KvPlacement, NodeProfileSchema, type JobPlan } from "@tessera/proto";
import { createGpuNode } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate } from "@tessera/testing";

/** A gpu profile streaming weights at `weightBytesPerSecond` (batch 1 is weight-bound). */
const profile = (weightBytesPerSecond: number) =>
  create(NodeProfileSchema, {
    role: "gpu",
    figures: {
      case: "gpu",
      value: {
        executionProvider: "cpu",
        flops: 1e11,
        weightBytesPerSecond,
        weightElementBytes: 4,
        deviceMemoryBytes: 8n << 30n,
      },
    },
  });

test("layer ranges follow the gpu-nodes' profiles; the plan is streamed and in the summary; tokens unchanged", async (t) => {
  // f32 on the wire: the comparison with one stage is exact.
  const fast = createGpuNode({ port: 0, wireDtype: "f32", profile: profile(4e9), pricePerHour: 2 });
  const slow = createGpuNode({ port: 0, wireDtype: "f32", profile: profile(1e9), pricePerHour: 1 });
  const memory = createMemoryNode({ port: 0, pricePerHour: 0.5 });
  await Promise.all([fast, slow, memory].map((n) => n.start()));
  const coordinator = (gpuNodes: string[]) =>
    createCoordinator({
      gpuNodes,
      memoryNodes: [memory.address],
      modelPath: bundled.model,
      tokenizerPath: bundled.tokenizer,
      log: () => {},
    });
  const pipeline = coordinator([slow.address, fast.address]);
  const single = coordinator([fast.address]);
  await Promise.all([pipeline.start(), single.start()]);
  t.after(async () => {
    await Promise.all([pipeline.close(), single.close()]);
    await Promise.all([fast, slow, memory].map((n) => n.close()));
  });

  const request = {
    prompts: [
      { id: "a", prompt: "Once upon a time" },
      { id: "b", prompt: "The little dog" },
    ],
    sampling: { temperature: 0, maxTokens: 32 },
    kv: KvPlacement.MEMORY,
  };
  const plans: JobPlan[] = [];
  const out = await generate(pipeline.address, request, (ev) => {
    if (ev.event.case === "plan") plans.push(ev.event.value);
  });
  const one = await generate(single.address, request);
  for (const id of ["a", "b"]) {
    assert.equal(out.results.get(id)!.error, "");
    assert.deepEqual(out.results.get(id)!.completionTokenIds, one.results.get(id)!.completionTokenIds, id);
  }
  // stories260K has 5 layers; a node 4x as fast takes 4 of them.
  assert.equal(plans.length, 1);
  const plan = plans[0]!;
  assert.deepEqual(
    plan.stages.map((s) => [s.address, s.layerStart, s.layerEnd]),
    [
      [slow.address, 0, 1],
      [fast.address, 1, 5],
    ],
  );
  assert.equal(plan.revision, 1);
  assert.equal(plan.reason, "job start");
  assert.deepEqual(
    plan.kvShares.map((s) => [s.address, s.role, s.units]),
    [[memory.address, "memory", 2]],
  );
  // $/h of the plan: both gpu-nodes and the memory-node.
  assert.equal(plan.pricePerHour, 3.5);
  assert.ok(plan.predictedStepSeconds > 0 && plan.predictedTokensPerSecond > 0);
  assert.ok(plan.predictedDollarsPerMillionTokens > 0);
  assert.deepEqual(out.summary?.plan, plan);
});
