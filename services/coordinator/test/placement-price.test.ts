/**
 * Price-aware KV placement (issue 4): a sequence goes to the node of its
 * role with room where its attention costs least per decoded token,
 * pricePerHour / 3600 x KV bytes / readBytesPerSecond; unknown prices and
 * ties fall back to the least-loaded rule. Costs below are worked by hand.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvPlacement } from "@tessera/proto";
import {
  attentionDollarsPerToken,
  placeSequences,
  type AttentionNodeInfo,
  type Placement,
  type PlacementEconomics,
} from "../src/index.js";

const where = (p: readonly Placement[]) =>
  p.map((x) => ("shards" in x ? x.shards.map((s) => s.node.address).join("+") : x.error));
const nodes = { memory: ["dear:1", "cheap:2"], storage: [] };
const mem = (n: number, positions = 1) => Array.from({ length: n }, () => ({ positions, kv: KvPlacement.MEMORY }));
const node = (pricePerHour: number, readBytesPerSecond: number, capacityBytes: number, usedBytes = 0) =>
  ({ pricePerHour, readBytesPerSecond, capacityBytes, usedBytes }) satisfies AttentionNodeInfo;
/** 100 bytes per position-head: a 1-position, 1-head sequence reserves 100 bytes. */
const economics = (dear: AttentionNodeInfo, cheap: AttentionNodeInfo): PlacementEconomics => ({
  nodes: new Map([
    ["dear:1", dear],
    ["cheap:2", cheap],
  ]),
  bytesPerPositionHead: 100,
});

test("attentionDollarsPerToken: price/3600 x bytes / bandwidth; unknown figures give undefined", () => {
  // $3.6/h = $0.001/s; 1e9 bytes at 1e10 bytes/s = 0.1 s -> $1e-4.
  assert.equal(attentionDollarsPerToken(node(3.6, 1e10, 0), 1e9), 1e-4);
  // $1/h, 100 bytes at 1e10 bytes/s: 1/3600 x 1e-8 = 2.777...e-12.
  assert.ok(Math.abs(attentionDollarsPerToken(node(1, 1e10, 0), 100)! - 1e-8 / 3600) < 1e-24);
  assert.equal(attentionDollarsPerToken(node(0, 1e10, 0), 100), undefined);
  assert.equal(attentionDollarsPerToken(node(1, 0, 0), 100), undefined);
  assert.equal(attentionDollarsPerToken(undefined, 100), undefined);
});

test("the cheaper node fills up first, then the other; each shard carries its predicted cost", () => {
  // cheap: $1/h at 10 GB/s, room for 2 x 100 bytes (250); dear: $2/h at 10 GB/s.
  const p = placeSequences(
    mem(4),
    nodes,
    4096,
    new Map(),
    undefined,
    economics(node(2, 1e10, 1000), node(1, 1e10, 250)),
  );
  assert.deepEqual(where(p), ["cheap:2", "cheap:2", "dear:1", "dear:1"]);
  const cost = p.map((x) => ("shards" in x ? x.shards[0]!.dollarsPerToken! : NaN));
  // cheap: 1/3600 x 100 / 1e10 = 2.78e-12 $; dear: twice that.
  for (const [i, want] of [1e-8 / 3600, 1e-8 / 3600, 2e-8 / 3600, 2e-8 / 3600].entries()) {
    assert.ok(Math.abs(cost[i]! - want) < 1e-24, `sequence ${i}: ${cost[i]} vs ${want}`);
  }
});

test("bandwidth counts as much as price: $2/h at 40 GB/s beats $1/h at 10 GB/s", () => {
  // Rates: dear 2/40 = 0.05, cheap 1/10 = 0.1 ($/h per GB/s).
  const p = placeSequences(
    mem(3),
    nodes,
    4096,
    new Map(),
    undefined,
    economics(node(2, 4e10, 1e6), node(1, 1e10, 1e6)),
  );
  assert.deepEqual(where(p), ["dear:1", "dear:1", "dear:1"]);
});

test("room counts what the node held at job start and this job's load", () => {
  // cheap: 500 bytes, 200 used by another job, 2 position-heads (200 bytes) of this job running: room for 1.
  const load = new Map([["cheap:2", 2]]);
  const p = placeSequences(
    mem(3),
    nodes,
    4096,
    load,
    undefined,
    economics(node(2, 1e10, 1e6), node(1, 1e10, 500, 200)),
  );
  assert.deepEqual(where(p), ["cheap:2", "dear:1", "dear:1"]);
  assert.deepEqual(Object.fromEntries(load), { "cheap:2": 3, "dear:1": 2 });
  // A bigger sequence (3 positions = 300 bytes) skips it even when it is empty enough for a small one.
  const q = placeSequences(
    [
      { positions: 3, kv: KvPlacement.MEMORY },
      { positions: 1, kv: KvPlacement.MEMORY },
    ],
    nodes,
    4096,
    new Map(),
    undefined,
    economics(node(2, 1e10, 1e6), node(1, 1e10, 250)),
  );
  assert.deepEqual(where(q), ["dear:1", "cheap:2"]);
});

test("no node with room: the least-loaded one is chosen (it refuses, the sequence waits)", () => {
  const load = new Map([
    ["dear:1", 5],
    ["cheap:2", 1],
  ]);
  const p = placeSequences(mem(1), nodes, 4096, load, undefined, economics(node(2, 1e10, 100), node(1, 1e10, 100)));
  assert.deepEqual(where(p), ["cheap:2"]);
  const q = placeSequences(
    mem(1),
    nodes,
    4096,
    new Map([
      ["dear:1", 1],
      ["cheap:2", 5],
    ]),
    undefined,
    economics(node(2, 1e10, 100), node(1, 1e10, 100)),
  );
  assert.deepEqual(where(q), ["dear:1"]);
});

test("an unknown price or bandwidth, or equal costs, fall back to least-loaded", () => {
  const spread = ["dear:1", "cheap:2", "dear:1", "cheap:2"];
  for (const e of [
    economics(node(0, 1e10, 1e6), node(1, 1e10, 1e6)), // dear's price unknown
    economics(node(2, 0, 1e6), node(1, 1e10, 1e6)), // dear's bandwidth unknown
    economics(node(2, 2e10, 1e6), node(1, 1e10, 1e6)), // equal rates
  ]) {
    assert.deepEqual(where(placeSequences(mem(4), nodes, 4096, new Map(), undefined, e)), spread);
  }
  // A node that did not answer Info is unknown too.
  const missing: PlacementEconomics = { nodes: new Map([["cheap:2", node(1, 1e10, 1e6)]]), bytesPerPositionHead: 100 };
  assert.deepEqual(where(placeSequences(mem(4), nodes, 4096, new Map(), undefined, missing)), spread);
  // Without economics nothing changes, and shards carry no cost.
  const plain = placeSequences(mem(2), nodes, 4096);
  assert.deepEqual(where(plain), ["dear:1", "cheap:2"]);
  assert.ok(plain.every((x) => "shards" in x && x.shards.every((s) => s.dollarsPerToken === undefined)));
});

test("KV-head groups: a sequence's second group goes to another node even when dearer", () => {
  // 2 KV heads in 2 groups, 1 position: 100 bytes per group.
  const p = placeSequences(
    mem(2),
    nodes,
    4096,
    new Map(),
    { nKvHeads: 2, groups: 2 },
    economics(node(2, 1e10, 1e6), node(1, 1e10, 1e6)),
  );
  assert.deepEqual(where(p), ["cheap:2+dear:1", "cheap:2+dear:1"]);
});
