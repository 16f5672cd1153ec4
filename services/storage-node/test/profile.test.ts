// The storage-node's self-profile through its library options and Info
// (real files in a temporary data directory, real gRPC on loopback).
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { ConfigError } from "@tessera/core";
import { Attention, NodeProfileSchema, create, createClient } from "@tessera/proto";
import { createStorageNode, profileStorageNode } from "@tessera/storage-node";
import { tmpfsDir } from "@tessera/testing";

async function dataDir(t: import("node:test").TestContext) {
  const dir = await mkdtemp(join(tmpdir(), "tessera-storage-profile-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return join(dir, "data");
}

async function info(
  t: import("node:test").TestContext,
  options: Omit<Parameters<typeof createStorageNode>[0], "dataDir">,
) {
  const dir = await dataDir(t);
  const node = createStorageNode({ port: 0, dataDir: dir, ...options });
  t.after(() => node.close());
  await node.start();
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  return { dir, info: await client.info({}) };
}

test('profile "measure": start() measures the data directory; Info advertises the profile and the price', async (t) => {
  const { dir, info: i } = await info(t, {
    profile: "measure",
    pricePerHour: 0.25,
    capacityBytes: "1GiB",
    bufferBytes: "8MiB",
    readBytesPerSecond: 777,
  });
  const p = i.profile;
  assert.ok(p);
  assert.equal(p.role, "storage");
  assert.equal(p.pricePerHour, 0.25);
  assert.equal(i.pricePerHour, 0.25);
  assert.ok(p.profileSeconds > 0);
  assert.equal(p.figures.case, "storage");
  const s = p.figures.value!;
  assert.equal(s.capacityBytes, 2n ** 30n);
  assert.equal(s.bufferBytes, 8n * 2n ** 20n);
  for (const [k, v] of Object.entries({
    readBytesPerSecond: s.readBytesPerSecond,
    writeBytesPerSecond: s.writeBytesPerSecond,
    syncSeconds: s.syncSeconds,
    kernelKvBytesPerSecond: s.kernelKvBytesPerSecond,
    kernelFlops: s.kernelFlops,
    freeBytes: Number(s.freeBytes),
  }))
    assert.ok(v > 0, `${k} = ${v}`);
  // Info's read_bytes_per_second stays the configured one.
  assert.equal(i.readBytesPerSecond, 777);
  // The measurement's files are gone.
  assert.deepEqual(await readdir(dir), []);
});

test('profile "off" (the default): Info has no profile', async (t) => {
  const { info: i } = await info(t, {});
  assert.equal(i.profile, undefined);
});

test("a given profile is advertised with profile_seconds 0, the node's price, capacity and buffer", async (t) => {
  const given = await profileStorageNode({ dataDir: await dataDir(t), pricePerHour: 3 });
  assert.equal(given.figures.case, "storage");
  const { info: i } = await info(t, { profile: given, capacityBytes: 2 ** 22, bufferBytes: 2 ** 20 });
  assert.equal(i.pricePerHour, 3);
  const expected = create(NodeProfileSchema, {
    ...given,
    profileSeconds: 0,
    figures: {
      case: "storage",
      value: { ...given.figures.value!, capacityBytes: 2n ** 22n, bufferBytes: 2n ** 20n },
    },
  });
  assert.deepEqual(i.profile, expected);
});

test("another role's profile is refused naming the option", () => {
  const memory = create(NodeProfileSchema, { role: "memory", figures: { case: "memory", value: {} } });
  assert.throws(
    () => createStorageNode({ dataDir: "/nonexistent", profile: memory }),
    (e: unknown) => e instanceof ConfigError && e.option === "profile" && /memory profile/.test(e.message),
  );
});

test("the disk profile on a small disk: a smaller probe file, or an error naming the directory and its free bytes", async (t) => {
  for (const [size, fits] of [
    ["16m", true],
    ["3m", false],
  ] as const) {
    const disk = await tmpfsDir(size);
    if (!disk) return t.skip("mounting a tmpfs needs root");
    t.after(() => disk.remove());
    const dataDir = join(disk.path, "data");
    if (fits) {
      // 64 MiB would not fit: the probe shrinks to a quarter of the free bytes.
      const p = await profileStorageNode({ dataDir, attentionKernel: "js" });
      assert.equal(p.figures.case, "storage");
      assert.ok(p.figures.value.writeBytesPerSecond > 0);
      assert.deepEqual(await readdir(dataDir), []);
    } else {
      await assert.rejects(profileStorageNode({ dataDir }), (err: Error) => {
        assert.ok(err instanceof ConfigError, String(err));
        assert.match(
          err.message,
          new RegExp(`^dataDir: ${dataDir} has \\d+ bytes free; the start-up disk profile needs 4194304`),
        );
        return true;
      });
    }
  }
});
