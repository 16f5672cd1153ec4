// The memory-node's self-profile through its library options and Info
// (real attention kernels and worker threads, real gRPC on loopback).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError } from "@tessera/core";
import { Attention, NodeProfileSchema, create, createClient } from "@tessera/proto";
import { createMemoryNode, profileMemoryNode } from "@tessera/memory-node";

async function info(t: import("node:test").TestContext, options: Parameters<typeof createMemoryNode>[0]) {
  const node = createMemoryNode({ port: 0, ...options });
  t.after(() => node.close());
  await node.start();
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  return client.info({});
}

test('profile "measure": start() measures; Info advertises the profile, its read bandwidth and the price', async (t) => {
  const i = await info(t, { profile: "measure", pricePerHour: 0.5, capacityBytes: "128MiB", attentionThreads: 2 });
  const p = i.profile;
  assert.ok(p);
  assert.equal(p.role, "memory");
  assert.equal(p.pricePerHour, 0.5);
  assert.equal(i.pricePerHour, 0.5);
  assert.ok(p.profileSeconds > 0);
  assert.equal(p.figures.case, "memory");
  const m = p.figures.value!;
  assert.equal(m.capacityBytes, 128n * 2n ** 20n);
  assert.equal(m.attentionThreads, 2);
  assert.ok(m.readBytesPerSecond > 0 && m.kernelKvBytesPerSecond > 0 && m.kernelFlops > 0);
  assert.ok(m.itemOverheadSeconds >= 0);
  // One measurement: Info's read_bytes_per_second keeps its meaning and is the profile's.
  assert.equal(i.readBytesPerSecond, m.readBytesPerSecond);
});

test("a configured read bandwidth is advertised by Info and in the measured profile", async (t) => {
  const i = await info(t, { profile: "measure", readBytesPerSecond: 12345, attentionThreads: 1 });
  assert.equal(i.readBytesPerSecond, 12345);
  assert.equal(i.profile?.figures.case, "memory");
  assert.equal(i.profile.figures.value!.readBytesPerSecond, 12345);
  assert.equal(i.profile.figures.value!.attentionThreads, 1);
});

test('profile "off" (the default): Info has no profile and still a measured read bandwidth', async (t) => {
  const i = await info(t, {});
  assert.equal(i.profile, undefined);
  assert.ok(i.readBytesPerSecond > 0);
});

test("a given profile is advertised with profile_seconds 0, the node's price and capacity", async (t) => {
  const given = await profileMemoryNode({ pricePerHour: 2, capacityBytes: 2 ** 20, attentionThreads: 1 });
  const i = await info(t, { profile: given, capacityBytes: 2 ** 21 });
  assert.equal(i.pricePerHour, 2);
  assert.equal(given.figures.case, "memory");
  const expected = create(NodeProfileSchema, {
    ...given,
    profileSeconds: 0,
    figures: { case: "memory", value: { ...given.figures.value!, capacityBytes: 2n ** 21n } },
  });
  assert.deepEqual(i.profile, expected);
  // Info's read bandwidth comes from the profile (not measured again).
  assert.equal(i.readBytesPerSecond, given.figures.value!.readBytesPerSecond);
});

test("another role's profile is refused naming the option", () => {
  const gpu = create(NodeProfileSchema, { role: "gpu", figures: { case: "gpu", value: {} } });
  assert.throws(
    () => createMemoryNode({ profile: gpu }),
    (e: unknown) => e instanceof ConfigError && e.option === "profile" && /gpu profile/.test(e.message),
  );
  const mixed = create(NodeProfileSchema, { role: "memory", figures: { case: "storage", value: {} } });
  assert.throws(() => createMemoryNode({ profile: mixed }), /figures storage/);
});
