import { test } from "node:test";
import assert from "node:assert/strict";
import { KvPlacement } from "@tessera/proto";
import { ConfigError } from "@tessera/core";
import { compileCoordinatorOptions, placeSequences, splitLayers } from "../src/index.js";

const nodes = { memory: ["m1:1", "m2:2"], storage: ["s1:3"] };

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
    { node: { role: "memory", address: "m1:1" } },
    { node: { role: "storage", address: "s1:3" } },
    { node: { role: "memory", address: "m2:2" } },
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
  assert.deepEqual(
    p.map((x) => ("node" in x ? x.node.address : x.error)),
    ["m1:1", "m2:2", "m2:2", "s1:3"],
  );
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
  assert.deepEqual(p, [
    { error: "no storage-node in this cluster to hold the KV cache" },
    { node: { role: "memory", address: "m1:1" } },
  ]);
});

test("options: defaults, and a bad value names the option", () => {
  const o = compileCoordinatorOptions({ gpuNodes: ["127.0.0.1:1"], memoryNodes: ["127.0.0.1:2"] });
  assert.equal(o.storageThresholdTokens, 4096);
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
