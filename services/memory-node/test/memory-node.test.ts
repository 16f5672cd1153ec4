import { test } from "node:test";
import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { Attention, Code, RpcError, checkHealth, createClient, type AttendResponse } from "@tessera/proto";
import {
  createMemoryNode,
  compileMemoryNodeOptions,
  measureReadBandwidth,
  type MemoryNode,
} from "@tessera/memory-node";
import { KvHistory, assertOutput, openAttend, random, type Layout } from "@tessera/testing";

const layout: Layout = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8 };
/** max_positions x n_layers x 2 x n_kv_heads x head_dim x 4 */
const bytesFor = (maxPositions: number, L = layout) => maxPositions * L.nLayers * 2 * L.nKvHeads * L.headDim * 4;

async function startNode(t: import("node:test").TestContext, capacityBytes?: number) {
  const node: MemoryNode = createMemoryNode({ port: 0, capacityBytes });
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  return { node, client };
}

test("prefill of two sequences in one request, then decode, equals naive attention", async (t) => {
  const { node, client } = await startNode(t);
  assert.equal(node.state, "running");
  assert.match(node.address, /^127\.0\.0\.1:\d+$/);
  const maxPositions = 24;
  for (const seqId of ["a", "b"]) {
    const r = await client.openSequence({ seqId, layout, maxPositions });
    assert.equal(r.length, 0);
    assert.equal(r.reservedBytes, BigInt(bytesFor(maxPositions)));
  }
  const history = new KvHistory(layout, maxPositions, random(1));
  const stream = openAttend(client);
  t.after(() => stream.end());
  // Prefill: a has 5 prompt tokens, b has 11, in one request per layer.
  for (let layer = 0; layer < layout.nLayers; layer++) {
    const s = history.step(layer, [
      { seqId: "a", startPos: 0, nTokens: 5 },
      { seqId: "b", startPos: 0, nTokens: 11 },
    ]);
    const r = await stream.attend(s.request);
    assert.equal(r.stepId, s.request.stepId);
    assert.equal(r.layer, layer);
    assertOutput(r, s.expected, layout, 1e-5, `prefill layer ${layer}`);
  }
  // Decode: 6 steps of one token each, both sequences in every request.
  for (let step = 0; step < 6; step++) {
    for (let layer = 0; layer < layout.nLayers; layer++) {
      const s = history.step(layer, [
        { seqId: "b", startPos: 11 + step, nTokens: 1 },
        { seqId: "a", startPos: 5 + step, nTokens: 1 },
      ]);
      assertOutput(await stream.attend(s.request), s.expected, layout, 1e-5, `decode ${step} layer ${layer}`);
    }
  }
  // Half-closing the stream ends it with OK.
  assert.equal(await stream.end(), Code.OK);
  // Re-opening with the same layout reports the length; Info the occupancy.
  assert.equal((await client.openSequence({ seqId: "a", layout, maxPositions })).length, 11);
  assert.equal((await client.openSequence({ seqId: "b", layout, maxPositions })).length, 17);
  const info = await client.info({});
  assert.deepEqual(
    [info.role, info.capacityBytes, info.usedBytes, info.sequences, info.pricePerHour],
    ["memory", BigInt(1024 ** 3), BigInt(2 * bytesFor(maxPositions)), 2, 0],
  );
  // Measured at start (a loose floor: any machine reads RAM faster than 100 MB/s).
  assert.ok(info.readBytesPerSecond > 1e8, `measured ${info.readBytesPerSecond} bytes/s`);
});

test("Info advertises the configured price and read bandwidth", async (t) => {
  const node = createMemoryNode({ port: 0, pricePerHour: 0.5, readBytesPerSecond: 2e10 });
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  const info = await client.info({});
  assert.deepEqual([info.pricePerHour, info.readBytesPerSecond], [0.5, 2e10]);
});

test("measureReadBandwidth reads 2 x bufferBytes and refuses bad arguments", () => {
  assert.ok(measureReadBandwidth(1024 ** 2, 2) > 1e8);
  assert.throws(() => measureReadBandwidth(0), /^RangeError: measureReadBandwidth: bufferBytes 0/);
});

test("length is the minimum over layers; a retried step overwrites and gives the same output", async (t) => {
  const { client } = await startNode(t);
  await client.openSequence({ seqId: "s", layout, maxPositions: 8 });
  const history = new KvHistory(layout, 8, random(2));
  const stream = openAttend(client);
  t.after(() => stream.end());
  for (let layer = 0; layer < 2; layer++) {
    const s = history.step(layer, [{ seqId: "s", startPos: 0, nTokens: 3 }]);
    assertOutput(await stream.attend(s.request), s.expected, layout);
  }
  // Decode position 3 on layer 0 only: the sequence's length stays 3.
  const s0 = history.step(0, [{ seqId: "s", startPos: 3, nTokens: 1 }]);
  const first = assertOutput(await stream.attend(s0.request), s0.expected, layout);
  assert.equal((await client.openSequence({ seqId: "s", layout, maxPositions: 8 })).length, 3);
  // The same request again (a retried step) overwrites position 3 with the same rows.
  const again = assertOutput(await stream.attend(s0.request), s0.expected, layout);
  assert.deepEqual(again, first);
  const s1 = history.step(1, [{ seqId: "s", startPos: 3, nTokens: 1 }]);
  assertOutput(await stream.attend(s1.request), s1.expected, layout);
  assert.equal((await client.openSequence({ seqId: "s", layout, maxPositions: 8 })).length, 4);
});

test("a sequence beyond capacity is refused with RESOURCE_EXHAUSTED naming node, sequence and bytes", async (t) => {
  const capacity = bytesFor(100) + 1000;
  const { node, client } = await startNode(t, capacity);
  await client.openSequence({ seqId: "fits", layout, maxPositions: 100 });
  await assert.rejects(client.openSequence({ seqId: "too-big", layout, maxPositions: 10 }), (err: RpcError) => {
    assert.equal(err.code, Code.RESOURCE_EXHAUSTED);
    assert.equal(
      err.message,
      `memory-node ${node.address}: cannot open sequence "too-big" (max_positions 10, 2 layers, 4 heads, 2 kv heads, head_dim 8): ` +
        `needs ${bytesFor(10)} bytes, 1000 available`,
    );
    return true;
  });
  const info = await client.info({});
  assert.deepEqual([info.usedBytes, info.sequences], [BigInt(bytesFor(100)), 1]);
});

test("bad OpenSequence arguments are INVALID_ARGUMENT", async (t) => {
  const { client } = await startNode(t);
  await client.openSequence({ seqId: "x", layout, maxPositions: 4 });
  const fails = (req: Parameters<typeof client.openSequence>[0], msg: RegExp) =>
    assert.rejects(client.openSequence(req), (err: RpcError) => {
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      assert.match(err.message, msg);
      return true;
    });
  await fails(
    { seqId: "x", layout: { ...layout, nKvHeads: 4 }, maxPositions: 4 },
    /sequence "x" is open with layout \(2 layers, 4 heads, 2 kv heads, head_dim 8\), not \(2 layers, 4 heads, 4 kv heads, head_dim 8\)/,
  );
  await fails({ seqId: "x", layout, maxPositions: 5 }, /open with max_positions 4; cannot grow to 5/);
  await fails(
    { seqId: "y", layout: { ...layout, nHeads: 3 }, maxPositions: 4 },
    /nHeads 3 is not a multiple of nKvHeads 2/,
  );
  await fails({ seqId: "y", maxPositions: 4 }, /layout is missing/);
  await fails({ seqId: "", layout, maxPositions: 4 }, /seq_id is empty/);
  await fails({ seqId: "y", layout, maxPositions: 0 }, /max_positions must be >= 1/);
});

test("a bad request gets an error response and the stream keeps working", async (t) => {
  const { node, client } = await startNode(t);
  await client.openSequence({ seqId: "ok", layout, maxPositions: 8 });
  const history = new KvHistory(layout, 8, random(3));
  const other = new KvHistory(layout, 16, random(4)); // requests the node must refuse
  const stream = openAttend(client);
  t.after(() => stream.end());

  const unknown = other.step(0, [{ seqId: "nope", startPos: 0, nTokens: 2 }]);
  const r1 = await stream.attend(unknown.request);
  assert.equal(r1.o, undefined);
  assert.deepEqual(
    { code: r1.error?.code, message: r1.error?.message, role: r1.error?.role, address: r1.error?.address },
    {
      code: Code.NOT_FOUND,
      message: `memory-node ${node.address}: layer 0: unknown sequence "nope" (not opened, or closed)`,
      role: "memory",
      address: node.address,
    },
  );
  // A gap: position 2 of a sequence with 0 positions.
  const gap = other.step(0, [{ seqId: "ok", startPos: 2, nTokens: 1 }]);
  const r2 = await stream.attend(gap.request);
  assert.equal(r2.error?.code, Code.OUT_OF_RANGE);
  assert.match(r2.error!.message, /sequence "ok": start_pos 2 leaves a gap after its 0 stored positions/);
  // Past max_positions.
  const past = other.step(0, [{ seqId: "ok", startPos: 0, nTokens: 9 }]);
  assert.equal((await stream.attend(past.request)).error?.code, Code.OUT_OF_RANGE);
  // A failed request had no effect: the good one still starts at 0.
  const s = history.step(0, [{ seqId: "ok", startPos: 0, nTokens: 4 }]);
  assertOutput(await stream.attend(s.request), s.expected, layout);
  // Mismatched shapes (q rows vs items).
  const bad = history.step(1, [{ seqId: "ok", startPos: 0, nTokens: 2 }]);
  const { q, k, v } = bad.request;
  const r4 = await stream.attend({ stepId: 99n, layer: 1, q, k, v, items: [{ seqId: "ok", startPos: 0, nTokens: 1 }] });
  assert.equal(r4.error?.code, Code.INVALID_ARGUMENT);
  assert.match(r4.error!.message, /items have 1 tokens in all, tensors have 2 rows/);
});

test("CloseSequence frees the cache; unknown ids succeed", async (t) => {
  const { client } = await startNode(t);
  await client.openSequence({ seqId: "a", layout, maxPositions: 16 });
  await client.openSequence({ seqId: "b", layout, maxPositions: 16 });
  assert.equal((await client.info({})).usedBytes, BigInt(2 * bytesFor(16)));
  await client.closeSequence({ seqId: "a" });
  await client.closeSequence({ seqId: "b" });
  await client.closeSequence({ seqId: "never-opened" });
  const info = await client.info({});
  assert.deepEqual([info.usedBytes, info.sequences], [0n, 0]);
  const stream = openAttend(client);
  t.after(() => stream.end());
  const s = new KvHistory(layout, 16, random(5)).step(0, [{ seqId: "a", startPos: 0, nTokens: 1 }]);
  assert.equal((await stream.attend(s.request)).error?.code, Code.NOT_FOUND);
});

test("grpc health says SERVING while running, and close() stops serving", async () => {
  const node = createMemoryNode({ port: 0 });
  await node.start();
  try {
    assert.equal(await checkHealth(node.address, "tessera.v1.Attention"), "SERVING");
    assert.equal(await checkHealth(node.address, ""), "SERVING");
  } finally {
    await node.close();
    await node.close(); // idempotent
  }
  assert.equal(node.state, "closed");
  assert.equal(await checkHealth(node.address, "tessera.v1.Attention", 500), "UNREACHABLE");
});

// An hour of grace: a drain that waited for the Attend stream to end by
// itself would hang, so the test would fail by its timeout.
test(
  "drain() ends an open Attend stream with OK at once rather than after its grace period",
  { timeout: 30_000 },
  async (t) => {
    const node = createMemoryNode({ port: 0, shutdownGraceMs: 3_600_000 });
    await node.start();
    t.after(() => node.close());
    const client = createClient(Attention, node.address);
    t.after(() => client.close());
    await client.openSequence({ seqId: "s", layout, maxPositions: 8 });
    const s = new KvHistory(layout, 8, random(7)).step(0, [{ seqId: "s", startPos: 0, nTokens: 3 }]);
    const call = client.attend();
    const status = new Promise<number>((resolve) => call.on("status", (st: { code: number }) => resolve(st.code)));
    const response = new Promise<AttendResponse>((resolve) => call.once("data", resolve));
    call.write(s.request);
    assertOutput(await response, s.expected, layout);
    // The client never half-closes: the node ends the stream itself.
    await node.drain();
    assert.equal(node.state, "draining");
    assert.equal(await status, Code.OK);
    await node.close();
    assert.equal(node.state, "closed");
  },
);

test("options are compiled once: defaults, sizes as strings, bad values name the option", () => {
  assert.deepEqual(compileMemoryNodeOptions(), {
    host: "127.0.0.1",
    port: 0,
    capacityBytes: 1024 ** 3,
    shutdownGraceMs: 5000,
    attentionThreads: availableParallelism(),
    attentionKernel: "wasm",
    pricePerHour: 0,
    readBytesPerSecond: undefined,
    profile: "off",
  });
  assert.equal(compileMemoryNodeOptions({ attentionThreads: 1 }).attentionThreads, 1);
  assert.equal(compileMemoryNodeOptions({ pricePerHour: 0.25 }).pricePerHour, 0.25);
  assert.throws(
    () => compileMemoryNodeOptions({ pricePerHour: -1 }),
    /^ConfigError: pricePerHour: must be a finite number >= 0, got -1/,
  );
  assert.throws(
    () => compileMemoryNodeOptions({ readBytesPerSecond: NaN }),
    /^ConfigError: readBytesPerSecond: must be a finite number >= 0, got NaN/,
  );
  assert.throws(
    () => compileMemoryNodeOptions({ attentionThreads: 0 }),
    /^ConfigError: attentionThreads: must be a positive integer, got 0/,
  );
  assert.equal(compileMemoryNodeOptions({ capacityBytes: "64MiB" }).capacityBytes, 64 * 1024 * 1024);
  assert.ok(Object.isFrozen(compileMemoryNodeOptions()));
  assert.throws(
    () => compileMemoryNodeOptions({ capacityBytes: "lots" }),
    /^ConfigError: capacityBytes: "lots" is not a size/,
  );
  assert.throws(
    () => compileMemoryNodeOptions({ port: 70000 }),
    /^ConfigError: port: must be an integer 0..65535, got 70000/,
  );
});

test("long sequences split between attention threads give the naive answer: prefill, then decode", async (t) => {
  // 2100 positions x 512 bytes of K and V: past core's SPLIT_MIN_BYTES, so
  // both the prefill and the decode items run on the worker thread too.
  const L: Layout = { nLayers: 1, nHeads: 8, nKvHeads: 2, headDim: 64 };
  const node = createMemoryNode({ port: 0, attentionThreads: 2 });
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  const maxPositions = 2102;
  for (const seqId of ["long", "short"]) await client.openSequence({ seqId, layout: L, maxPositions });
  const history = new KvHistory(L, maxPositions, random(9));
  const stream = openAttend(client);
  t.after(() => stream.end());
  const prefill = history.step(0, [
    { seqId: "short", startPos: 0, nTokens: 3 },
    { seqId: "long", startPos: 0, nTokens: 2100 },
  ]);
  assertOutput(await stream.attend(prefill.request), prefill.expected, L, 1e-5, "prefill");
  const decode = history.step(0, [
    { seqId: "long", startPos: 2100, nTokens: 1 },
    { seqId: "short", startPos: 3, nTokens: 1 },
  ]);
  assertOutput(await stream.attend(decode.request), decode.expected, L, 1e-5, "decode");
});

test("a sequence larger than one wasm heap (4 GiB) spans two, with the naive answers", async (t) => {
  // Per layer, K and V of 3 Mi positions x 256 bytes: 1.5 GiB; three layers
  // do not fit one 4 GiB heap. Only the first pages are ever touched.
  const L: Layout = { nLayers: 3, nHeads: 4, nKvHeads: 1, headDim: 64 };
  const maxPositions = 3 * 2 ** 20;
  const node = createMemoryNode({ port: 0, capacityBytes: "5GiB", attentionThreads: 1 });
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  const r = await client.openSequence({ seqId: "big", layout: L, maxPositions });
  assert.equal(r.reservedBytes, BigInt(bytesFor(maxPositions, L)));
  const history = new KvHistory(L, 8, random(12));
  const stream = openAttend(client);
  t.after(() => stream.end());
  for (let layer = 0; layer < L.nLayers; layer++) {
    const s = history.step(layer, [{ seqId: "big", startPos: 0, nTokens: 5 }]);
    assertOutput(await stream.attend(s.request), s.expected, L, 1e-5, `prefill layer ${layer}`);
  }
  for (let layer = 0; layer < L.nLayers; layer++) {
    const s = history.step(layer, [{ seqId: "big", startPos: 5, nTokens: 1 }]);
    assertOutput(await stream.attend(s.request), s.expected, L, 1e-5, `decode layer ${layer}`);
  }
  await client.closeSequence({ seqId: "big" });
  assert.equal((await client.info({})).usedBytes, 0n);
});

test("a sequence whose K/V fill a wasm heap, leaving no room for attention scratch, is refused with RESOURCE_EXHAUSTED", async (t) => {
  // One layer of K and V of 2^23 positions x 256 bytes: exactly the 4 GiB of
  // one heap (untouched pages), so the kernels' scratch cannot go there.
  const L: Layout = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: 64 };
  const node = createMemoryNode({ port: 0, capacityBytes: "5GiB", attentionThreads: 1 });
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  await assert.rejects(client.openSequence({ seqId: "huge", layout: L, maxPositions: 2 ** 23 }), (err: RpcError) => {
    assert.equal(err.code, Code.RESOURCE_EXHAUSTED);
    assert.match(
      err.message,
      new RegExp(`^memory-node ${node.address}: no room in its wasm heap for attention scratch for sequence "huge" `),
    );
    return true;
  });
  assert.deepEqual((await client.info({})).usedBytes, 0n);
  // The heap's space is free again: a smaller sequence fits and attends.
  await client.openSequence({ seqId: "small", layout: L, maxPositions: 8 });
  const history = new KvHistory(L, 8, random(13));
  const stream = openAttend(client);
  t.after(() => stream.end());
  const s = history.step(0, [{ seqId: "small", startPos: 0, nTokens: 3 }]);
  assertOutput(await stream.attend(s.request), s.expected, L, 1e-5, "after the refusal");
});
