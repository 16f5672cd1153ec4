// The gpu-node's self-profile through its library options and GpuNode.Info
// (real onnxruntime sessions, real gRPC on loopback).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError } from "@tessera/core";
import { GpuNode, NodeProfileSchema, create, createClient } from "@tessera/proto";
import {
  GPU_PROFILE_SIZES,
  createGpuNode,
  createOrtMatMulTimer,
  profileGpuNode,
  timeOrtLayerOverhead,
} from "@tessera/gpu-node";

async function info(t: import("node:test").TestContext, options: Parameters<typeof createGpuNode>[0]) {
  const node = createGpuNode({ port: 0, ...options });
  t.after(() => node.close());
  await node.start();
  const client = createClient(GpuNode, node.address);
  t.after(() => client.close());
  return client.info({});
}

test('profile "measure": start() measures, Info advertises the profile with the price', async (t) => {
  const i = await info(t, { profile: "measure", pricePerHour: 3.5 });
  assert.equal(i.pricePerHour, 3.5);
  assert.equal(i.executionProvider, "cpu");
  const p = i.profile;
  assert.ok(p);
  assert.equal(p.role, "gpu");
  assert.equal(p.pricePerHour, 3.5);
  assert.ok(p.profileSeconds > 0);
  assert.equal(p.figures.case, "gpu");
  const g = p.figures.value!;
  assert.equal(g.executionProvider, "cpu");
  assert.equal(g.weightElementBytes, 4);
  assert.deepEqual(
    g.dense.map((d) => [d.batch, d.k, d.n]),
    GPU_PROFILE_SIZES.batches.map((b) => [b, GPU_PROFILE_SIZES.k, GPU_PROFILE_SIZES.n]),
  );
  // The roofline figures are the best of the samples (denseFigures).
  const flops = Math.max(...g.dense.map((d) => (2 * d.batch * d.k * d.n) / d.seconds));
  const bytes = Math.max(...g.dense.map((d) => (d.k * d.n * 4) / d.seconds));
  assert.equal(g.flops, flops);
  assert.equal(g.weightBytesPerSecond, bytes);
  assert.ok(g.layerOverheadSeconds > 0 && g.deviceMemoryBytes > 0n);
});

test("the timers run: MatMul over several weight copies per shape, a layer's graphs with and without an idle gap", async () => {
  // 64 × 128 f32 is 32 KiB: 256 KiB of stream bytes gives 8 copies (the count is not observable; the runs are).
  const timer = createOrtMatMulTimer({}, { streamBytes: 256 * 2 ** 10, rounds: 1 });
  try {
    for (const batch of [1, 4]) {
      const s = await timer.time(batch, 64, 128);
      assert.ok(Number.isFinite(s) && s > 0, `batch ${batch}: ${s} s`);
    }
  } finally {
    await timer.release();
  }
  for (const gapMs of [0, 1]) {
    const s = await timeOrtLayerOverhead({}, { gapMs, reps: 3 });
    assert.ok(Number.isFinite(s) && s > 0, `gap ${gapMs} ms: ${s} s`);
  }
});

test('profile "off" (the default): Info has no profile; the price is still advertised', async (t) => {
  const i = await info(t, { pricePerHour: 1 });
  assert.equal(i.profile, undefined);
  assert.equal(i.pricePerHour, 1);
});

test("a given profile is advertised with profile_seconds 0 and its price unless one is configured", async (t) => {
  const given = await profileGpuNode({ pricePerHour: 2 });
  assert.equal(given.pricePerHour, 2);
  const i = await info(t, { profile: given });
  assert.equal(i.pricePerHour, 2);
  assert.deepEqual(i.profile, { ...given, profileSeconds: 0 });
  const j = await info(t, { profile: given, pricePerHour: 5 });
  assert.deepEqual(j.profile, { ...given, profileSeconds: 0, pricePerHour: 5 });
});

test("another role's profile or a bad value is refused naming the option", () => {
  const memory = create(NodeProfileSchema, { role: "memory", figures: { case: "memory", value: {} } });
  assert.throws(
    () => createGpuNode({ profile: memory }),
    (e: unknown) => e instanceof ConfigError && e.option === "profile" && /memory profile/.test(e.message),
  );
  assert.throws(
    () => createGpuNode({ profile: "sometimes" as "off" }),
    (e: unknown) => e instanceof ConfigError && e.option === "profile",
  );
  assert.throws(
    () => createGpuNode({ pricePerHour: -1 }),
    (e: unknown) => e instanceof ConfigError && e.option === "pricePerHour",
  );
});
