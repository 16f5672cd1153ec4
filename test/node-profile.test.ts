// Node profiles (issue 4, item 1) end to end through the built CLI
// (npx tsc -b apps/cli): `tessera node <role> --profile-only` prints a
// NodeProfile as proto JSON; a node started with the default --profile
// (measure) advertises one in Info; a file written by --profile-only
// round-trips through `--profile FILE` into Info; bad files fail naming the file.
import assert from "node:assert/strict";
import { fork } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { cliEntry } from "@tessera/cli";
import {
  Attention,
  GpuNode,
  NodeProfileSchema,
  createClient,
  fromJson,
  toJson,
  type NodeProfile,
} from "@tessera/proto";
import { runCli } from "./helpers.js";
import type { NodeRole } from "@tessera/core";

type Role = NodeRole;

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-profile-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The CLI arguments of a node of `role` (a storage-node needs a data directory). */
const nodeArgs = (role: Role, dir: string) =>
  role === "storage" ? ["node", "storage", "--data-dir", join(dir, "data")] : ["node", role];

/** Every number in the role's figures that a measurement fills, by name. */
function figures(p: NodeProfile): Record<string, number> {
  const f = p.figures;
  switch (f.case) {
    case "gpu":
      return {
        flops: f.value.flops,
        weightBytesPerSecond: f.value.weightBytesPerSecond,
        layerOverheadSeconds: f.value.layerOverheadSeconds,
        deviceMemoryBytes: Number(f.value.deviceMemoryBytes),
        weightElementBytes: f.value.weightElementBytes,
        ...Object.fromEntries(f.value.dense.map((d) => [`dense batch ${d.batch} seconds`, d.seconds])),
      };
    case "memory":
      return {
        readBytesPerSecond: f.value.readBytesPerSecond,
        kernelKvBytesPerSecond: f.value.kernelKvBytesPerSecond,
        kernelFlops: f.value.kernelFlops,
        attentionThreads: f.value.attentionThreads,
        capacityBytes: Number(f.value.capacityBytes),
      };
    case "storage":
      return {
        readBytesPerSecond: f.value.readBytesPerSecond,
        writeBytesPerSecond: f.value.writeBytesPerSecond,
        syncSeconds: f.value.syncSeconds,
        capacityBytes: Number(f.value.capacityBytes),
        freeBytes: Number(f.value.freeBytes),
        bufferBytes: Number(f.value.bufferBytes),
        kernelKvBytesPerSecond: f.value.kernelKvBytesPerSecond,
        kernelFlops: f.value.kernelFlops,
      };
    default:
      return {};
  }
}

/** Runs `--profile-only`; returns the stdout JSON and the profile it parses to. */
async function profileOnly(role: Role, dir: string, extra: string[] = []) {
  const r = await runCli([...nodeArgs(role, dir), "--profile-only", ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const json = JSON.parse(r.stdout) as Record<string, unknown>;
  return { json, profile: fromJson(NodeProfileSchema, json as Parameters<typeof fromJson>[1]), stderr: r.stderr };
}

/**
 * Starts `tessera ...args` as a node process and resolves with its address
 * once it is serving (the "ready" message runUntilSignal sends); stopped
 * with SIGTERM after the test.
 */
function startNode(t: TestContext, args: string[]): Promise<string> {
  const child = fork(cliEntry, args, { stdio: ["ignore", "ignore", "pipe", "ipc"], execArgv: [] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  });
  return new Promise((resolve, reject) => {
    child.on("message", (m: { type?: string; address?: string }) => {
      if (m?.type === "ready") resolve(m.address!);
    });
    child.once("exit", (code) => reject(new Error(`tessera ${args.join(" ")} exited (${code}):\n${stderr}`)));
  });
}

/** The profile a node at `address` advertises in Info, and the price Info reports. */
async function infoOf(role: Role, address: string) {
  if (role === "gpu") {
    const c = createClient(GpuNode, address);
    try {
      const i = await c.info({});
      return { profile: i.profile, price: i.pricePerHour, readBytesPerSecond: undefined };
    } finally {
      c.close();
    }
  }
  const c = createClient(Attention, address);
  try {
    const i = await c.info({});
    assert.equal(i.role, role);
    return { profile: i.profile, price: i.pricePerHour, readBytesPerSecond: i.readBytesPerSecond };
  } finally {
    c.close();
  }
}

for (const [role, price] of [
  ["gpu", 2.5],
  ["memory", 1.25],
  ["storage", 0.375],
] as const) {
  test(`tessera node ${role} --profile-only: proto JSON of a ${role} profile with positive figures and the price`, async (t) => {
    const dir = await tempDir(t);
    const { json, profile, stderr } = await profileOnly(role, dir, ["--price", String(price)]);
    assert.equal(json["role"], role);
    assert.equal(profile.role, role);
    assert.equal(profile.figures.case, role);
    assert.equal(profile.pricePerHour, price);
    assert.ok(profile.cores >= 1);
    assert.ok(profile.memoryBytes > 0n);
    assert.ok(profile.profileSeconds > 0);
    const f = figures(profile);
    assert.ok(Object.keys(f).length >= 5);
    for (const [name, v] of Object.entries(f)) assert.ok(Number.isFinite(v) && v > 0, `${name} = ${v}`);
    // The proto JSON mapping's field names, and the table on stderr.
    assert.ok(role in json);
    assert.match(stderr, new RegExp(`^role +${role}$`, "m"));
    if (profile.figures.case === "gpu") {
      assert.deepEqual(
        profile.figures.value.dense.map((d) => d.batch),
        [1, 16, 64],
      );
      assert.equal(profile.figures.value.executionProvider, "cpu");
    }
    if (profile.figures.case === "memory") assert.equal(profile.figures.value.capacityBytes, 2n ** 30n);
    if (profile.figures.case === "storage") assert.equal(profile.figures.value.bufferBytes, 64n * 2n ** 20n);
  });

  test(`tessera node ${role} --profile FILE: Info advertises the file's profile`, async (t) => {
    const dir = await tempDir(t);
    const { json } = await profileOnly(role, dir, ["--price", String(price)]);
    const file = join(dir, `${role}.json`);
    await writeFile(file, JSON.stringify(json));
    const address = await startNode(t, [...nodeArgs(role, dir), "--plaintext", "--port", "0", "--profile", file]);
    const info = await infoOf(role, address);
    assert.ok(info.profile);
    // As written, but profile_seconds 0 (not measured by this node; 0 is omitted in proto JSON).
    const expected: Record<string, unknown> = { ...json };
    delete expected["profileSeconds"];
    assert.deepEqual(toJson(NodeProfileSchema, info.profile), expected);
    // The file's price, as no --price was given.
    assert.equal(info.price, price);
    if (info.profile.figures.case === "memory")
      assert.equal(info.readBytesPerSecond, info.profile.figures.value.readBytesPerSecond);
  });
}

test("tessera node memory (default --profile measure): Info carries the measured profile and price", async (t) => {
  const address = await startNode(t, [
    "node",
    "memory",
    "--plaintext",
    "--port",
    "0",
    "--price",
    "0.75",
    "--capacity",
    "256MiB",
  ]);
  const info = await infoOf("memory", address);
  assert.ok(info.profile);
  assert.equal(info.profile.role, "memory");
  assert.equal(info.profile.pricePerHour, 0.75);
  assert.equal(info.price, 0.75);
  assert.ok(info.profile.profileSeconds > 0);
  assert.equal(info.profile.figures.case, "memory");
  const m = info.profile.figures.value as Extract<NodeProfile["figures"], { case: "memory" }>["value"];
  assert.equal(m.capacityBytes, 256n * 2n ** 20n);
  assert.ok(m.kernelKvBytesPerSecond > 0 && m.kernelFlops > 0);
  // Info's read bandwidth is the profile's (one measurement).
  assert.equal(info.readBytesPerSecond, m.readBytesPerSecond);
});

test("tessera node gpu --profile off: Info has no profile", async (t) => {
  const address = await startNode(t, ["node", "gpu", "--plaintext", "--port", "0", "--profile", "off", "--price", "4"]);
  const info = await infoOf("gpu", address);
  assert.equal(info.profile, undefined);
  assert.equal(info.price, 4);
});

test("tessera node --profile FILE: bad JSON, unknown fields, a missing file and another role's profile fail naming the file", async (t) => {
  const dir = await tempDir(t);
  const bad = join(dir, "bad.json");
  await writeFile(bad, "{ role: gpu");
  let r = await runCli(["node", "gpu", "--port", "0", "--profile", bad]);
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(`--profile ${bad}: not JSON`), r.stderr);

  const unknown = join(dir, "unknown.json");
  await writeFile(unknown, JSON.stringify({ role: "gpu", gpu: { flopz: 1 } }));
  r = await runCli(["node", "gpu", "--port", "0", "--profile", unknown]);
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(`--profile ${unknown}: not a tessera.v1.NodeProfile`), r.stderr);
  assert.match(r.stderr, /flopz/);

  const missing = join(dir, "missing.json");
  r = await runCli(["node", "memory", "--port", "0", "--profile", missing]);
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(`--profile ${missing}: cannot read`), r.stderr);

  const memory = join(dir, "memory.json");
  await writeFile(memory, JSON.stringify({ role: "memory", memory: { readBytesPerSecond: 1e9 } }));
  r = await runCli(["node", "gpu", "--port", "0", "--profile", memory]);
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(`--profile ${memory}: a memory profile`), r.stderr);
  assert.match(r.stderr, /this is a gpu-node/);

  // A role that does not match its figures.
  const mixed = join(dir, "mixed.json");
  await writeFile(mixed, JSON.stringify({ role: "storage", memory: { readBytesPerSecond: 1e9 } }));
  r = await runCli([...nodeArgs("storage", dir), "--port", "0", "--profile", mixed]);
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(`--profile ${mixed}: a storage profile (figures memory)`), r.stderr);
});
