import { test } from "node:test";
import assert from "node:assert/strict";
import { KvPlacement } from "@tessera/proto";
import { ConfigError } from "@tessera/core";
import { compileCoordinatorOptions, placeSequences, splitKvHeads, splitLayers, type Placement } from "../src/index.js";

const nodes = { memory: ["m1:1", "m2:2"], storage: ["s1:3"] };

/** The node address(es) of each placement ("a+b" for a split sequence), or its error. */
const where = (p: readonly Placement[]) =>
  p.map((x) => ("shards" in x ? x.shards.map((s) => s.node.address).join("+") : x.error));

test("auto places by prompt + max tokens against the storage threshold", () => {
  const p = placeSequences(
    [
      { positions: 100, kv: KvPlacement.AUTO },
      { positions: 5000, kv: KvPlacement.AUTO },
      { positions: 4096, kv: KvPlacement.AUTO },
    ],
    nodes,
    4096,
  );
  assert.deepEqual(p, [
    { shards: [{ node: { role: "memory", address: "m1:1" }, kvHeadStart: 0, kvHeadEnd: 1 }] },
    { shards: [{ node: { role: "storage", address: "s1:3" }, kvHeadStart: 0, kvHeadEnd: 1 }] },
    { shards: [{ node: { role: "memory", address: "m2:2" }, kvHeadStart: 0, kvHeadEnd: 1 }] },
  ]);
});

test("explicit placements are honoured and spread to the least-loaded node", () => {
  const p = placeSequences(
    [
      { positions: 300, kv: KvPlacement.MEMORY },
      { positions: 100, kv: KvPlacement.MEMORY },
      { positions: 100, kv: KvPlacement.MEMORY },
      { positions: 10, kv: KvPlacement.STORAGE },
    ],
    nodes,
    4096,
  );
  assert.deepEqual(where(p), ["m1:1", "m2:2", "m2:2", "s1:3"]);
});

test("a role with no nodes: explicit requests fail with a reason, auto falls back", () => {
  const only = { memory: ["m1:1"], storage: [] };
  const p = placeSequences(
    [
      { positions: 10, kv: KvPlacement.STORAGE },
      { positions: 9999, kv: KvPlacement.AUTO },
    ],
    only,
    4096,
  );
  assert.deepEqual(where(p), ["no storage-node in this cluster to hold the KV cache", "m1:1"]);
});

test("KV heads split into equal contiguous groups; a non-divisor is refused", () => {
  assert.deepEqual(splitKvHeads(4, 1), [[0, 4]]);
  assert.deepEqual(splitKvHeads(4, 2), [
    [0, 2],
    [2, 4],
  ]);
  assert.deepEqual(splitKvHeads(8, 4), [
    [0, 2],
    [2, 4],
    [4, 6],
    [6, 8],
  ]);
  assert.throws(() => splitKvHeads(4, 3), /kvHeadGroups 3 does not divide the model's n_kv_heads 4/);
  assert.throws(() => splitKvHeads(4, 8), /does not divide/);
  assert.throws(() => splitKvHeads(4, 0), /does not divide/);
});

test("head groups go to distinct least-loaded nodes of the role, load counted in position-heads", () => {
  const split = { nKvHeads: 4, groups: 2 };
  const load = new Map<string, number>();
  const p = placeSequences(
    [
      { positions: 100, kv: KvPlacement.MEMORY },
      { positions: 50, kv: KvPlacement.MEMORY },
      { positions: 10, kv: KvPlacement.STORAGE },
    ],
    nodes,
    4096,
    load,
    split,
  );
  // Each memory sequence has one group on each memory-node; the single
  // storage-node takes both groups of its sequence.
  assert.deepEqual(where(p), ["m1:1+m2:2", "m1:1+m2:2", "s1:3+s1:3"]);
  const first = p[0]!;
  assert.ok("shards" in first);
  assert.deepEqual(
    first.shards.map((s) => [s.kvHeadStart, s.kvHeadEnd]),
    [
      [0, 2],
      [2, 4],
    ],
  );
  assert.deepEqual(Object.fromEntries(load), { "m1:1": 300, "m2:2": 300, "s1:3": 40 });

  // Load from running sequences steers groups: the first group goes to the
  // emptier node, the second to the other one (distinct beats emptier).
  const busy = new Map([["m1:1", 1000]]);
  const q = placeSequences([{ positions: 10, kv: KvPlacement.MEMORY }], nodes, 4096, busy, split);
  assert.deepEqual(where(q), ["m2:2+m1:1"]);
  // More groups than nodes: groups share nodes, least-loaded first.
  const r = placeSequences([{ positions: 10, kv: KvPlacement.MEMORY }], nodes, 4096, new Map(), {
    nKvHeads: 4,
    groups: 4,
  });
  assert.deepEqual(where(r), ["m1:1+m2:2+m1:1+m2:2"]);
  assert.throws(() => placeSequences([], nodes, 4096, new Map(), { nKvHeads: 4, groups: 3 }), /does not divide/);
});

test("options: defaults, and a bad value names the option", () => {
  const o = compileCoordinatorOptions({ gpuNodes: ["127.0.0.1:1"], memoryNodes: ["127.0.0.1:2"] });
  assert.equal(o.storageThresholdTokens, 4096);
  assert.equal(o.kvHeadGroups, 1);
  assert.equal(o.kvPlacement, "plan");
  assert.equal(o.failoverMs, 3000);
  assert.throws(
    () =>
      compileCoordinatorOptions({
        gpuNodes: ["a:1"],
        memoryNodes: ["b:2"],
        kvPlacement: "random" as unknown as "plan",
      }),
    (e: unknown) => e instanceof ConfigError && e.option === "kvPlacement",
  );
  assert.throws(
    () => compileCoordinatorOptions({ gpuNodes: ["a:1"], memoryNodes: ["b:2"], kvHeadGroups: 0 }),
    (e: unknown) => e instanceof ConfigError && e.option === "kvHeadGroups",
  );
  assert.equal(o.port, 0);
  assert.ok(Object.isFrozen(o));
  assert.throws(
    () => compileCoordinatorOptions({ gpuNodes: [], memoryNodes: ["a:1"] }),
    (e: unknown) => e instanceof ConfigError && e.option === "gpuNodes",
  );
  assert.throws(
    () => compileCoordinatorOptions({ gpuNodes: ["nope"], memoryNodes: ["a:1"] }),
    /gpuNodes: "nope" is not host:port/,
  );
  assert.throws(() => compileCoordinatorOptions({ gpuNodes: ["a:1"] }), /memoryNodes/);
  assert.throws(
    () => compileCoordinatorOptions({ gpuNodes: ["a:1"], memoryNodes: ["b:2"], retryTimeoutMs: -5 }),
    /retryTimeoutMs/,
  );
});

test("layers split evenly over pipeline stages, earlier stages taking the remainder", () => {
  assert.deepEqual(splitLayers(5, 2), [
    { start: 0, end: 3 },
    { start: 3, end: 5 },
  ]);
  assert.deepEqual(splitLayers(16, 4), [
    { start: 0, end: 4 },
    { start: 4, end: 8 },
    { start: 8, end: 12 },
    { start: 12, end: 16 },
  ]);
  assert.deepEqual(splitLayers(2, 3), [
    { start: 0, end: 1 },
    { start: 1, end: 2 },
  ]);
  assert.deepEqual(splitLayers(5, 1), [{ start: 0, end: 5 }]);
  assert.throws(() => splitLayers(5, 0), RangeError);
});
