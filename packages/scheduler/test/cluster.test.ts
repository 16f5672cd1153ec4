// Cluster files: quantities, catalogue parts with overrides, and errors that
// name the file and the field.
import assert from "node:assert/strict";
import { readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  ClusterFileError,
  LINKS,
  loadCluster,
  parseQuantity,
  resolveCluster,
  type AttentionSpec,
  type GpuSpec,
} from "@tessera/scheduler";

const examples = fileURLToPath(new URL("../../../examples/clusters/", import.meta.url));

test("parseQuantity: SI and binary suffixes, bits, per second", () => {
  assert.equal(parseQuantity("80GB"), 80e9);
  assert.equal(parseQuantity("768GiB"), 768 * 2 ** 30);
  assert.equal(parseQuantity("3.35TB/s"), 3.35e12);
  assert.equal(parseQuantity("989T"), 989e12);
  assert.equal(parseQuantity("25Gb/s"), 25e9 / 8);
  assert.equal(parseQuantity(1234), 1234);
  assert.throws(() => parseQuantity("fast"), /not a quantity/);
  assert.throws(() => parseQuantity("1e400"), /not a finite quantity/);
  assert.throws(() => parseQuantity("1e400GB"), /not a finite quantity/);
});

test("resolveCluster: parts, overrides, per-drive storage figures, links", () => {
  const c = resolveCluster("c.yaml", {
    link: "25GbE",
    pools: [
      { name: "gpu", kind: "gpu", count: 2, part: "h100-sxm-80gb", price: 3 },
      { name: "mem", kind: "memory", count: 1, part: "ddr5-4800-8ch", capacity: "512GB", link: "100GbE" },
      { name: "nvme", kind: "storage", count: 1, part: "nvme-gen4-pm9a3", drives: 2 },
    ],
  });
  const [g, m, s] = c.pools;
  assert.equal(g!.nodes.length, 2);
  const g0 = g!.nodes[0] as GpuSpec;
  assert.equal(g0.id, "gpu#0");
  assert.equal(g0.pricePerHour, 3);
  assert.equal(g0.flops, 989.4e12);
  assert.equal(g0.link.bandwidth, LINKS["25GbE"]!.bandwidth);
  const m0 = m!.nodes[0] as AttentionSpec;
  assert.equal(m0.capacityBytes, 512e9);
  assert.equal(m0.readBandwidth, 307.2e9);
  assert.equal(m0.link.bandwidth, LINKS["100GbE"]!.bandwidth);
  const s0 = s!.nodes[0] as AttentionSpec;
  assert.equal(s0.readBandwidth, 2 * 6.9e9);
  assert.equal(s0.capacityBytes, 2 * 3.84e12);
});

test("resolveCluster: errors name the file and the field", () => {
  const bad = (pools: unknown[], re: RegExp) =>
    assert.throws(
      () => resolveCluster("bad.yaml", { pools }),
      (err: unknown) => err instanceof ClusterFileError && re.test(err.message),
    );
  bad([{ kind: "gpu", count: 1, part: "h200" }], /^bad\.yaml: pools\[0\]\.part: unknown part "h200"/);
  bad([{ kind: "memory", count: 1, part: "l4" }], /^bad\.yaml: pools\[0\]\.part: "l4" is a gpu part/);
  bad(
    [{ kind: "gpu", count: 1, price: 1, flops: "1T", memory: "8GB" }],
    /^bad\.yaml: pools\[0\]\.memoryBandwidth: required/,
  );
  bad(
    [{ kind: "gpu", count: 1, part: "l4", memory: "lots" }],
    /^bad\.yaml: pools\[0\]\.memory: "lots" is not a quantity/,
  );
  bad([{ kind: "tpu", count: 1 }], /^bad\.yaml: pools\[0\]\.kind: /);
  bad([{ kind: "gpu", count: 1, part: "l4", colour: "red" }], /^bad\.yaml: pools\[0\]: .*colour/);
  bad([{ kind: "gpu", count: 1, part: "l4", link: "10GbE" }], /^bad\.yaml: pools\[0\]\.link: unknown link "10GbE"/);
  bad(
    [
      { name: "a", kind: "gpu", count: 1, part: "l4" },
      { name: "a", kind: "gpu", count: 1, part: "l4" },
    ],
    /^bad\.yaml: pools\[1\]\.name: duplicate/,
  );
});

test("loadCluster: every example file loads; YAML errors name the file", async () => {
  const files = (await readdir(examples)).filter((f) => f.endsWith(".yaml"));
  assert.ok(files.length >= 3);
  for (const f of files) {
    const c = await loadCluster(join(examples, f));
    assert.ok(
      c.pools.some((p) => p.kind === "gpu" && p.nodes.length > 0),
      f,
    );
  }
  const broken = join(tmpdir(), `tessera-cluster-${process.pid}.yaml`);
  await writeFile(broken, "pools: [ { kind: gpu,\n");
  await assert.rejects(loadCluster(broken), (err: Error) => err.message.startsWith(`${broken}: (yaml): `));
  await assert.rejects(loadCluster(join(examples, "missing.yaml")), /missing\.yaml: \(file\): /);
});
