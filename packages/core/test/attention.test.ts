import { test } from "node:test";
import assert from "node:assert/strict";
import {
  attendKvCache,
  createAttentionScratch,
  createOnlineAttention,
  getWasmAttention,
  planAttendRequest,
  kvSequenceBytes,
  f32Tensor,
  type AttentionDims,
  type AttendTarget,
} from "@tessera/core";
import { Code, create, AttendRequestSchema } from "@tessera/proto";
import { naiveAttention, random } from "@tessera/testing";

function fill(n: number, rnd: () => number, amp = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rnd() * amp);
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rel: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const tol = rel * Math.max(1, Math.abs(e));
    assert.ok(Math.abs(a - e) <= tol, `${what}[${i}]: ${a} vs ${e} (tolerance ${tol})`);
  }
}

const shapes: { name: string; dims: AttentionDims }[] = [
  { name: "MHA 4 heads x 8", dims: { nHeads: 4, nKvHeads: 4, headDim: 8 } },
  { name: "GQA 8 heads / 2 kv x 16", dims: { nHeads: 8, nKvHeads: 2, headDim: 16 } },
  { name: "MQA 6 heads / 1 kv x 5", dims: { nHeads: 6, nKvHeads: 1, headDim: 5 } },
];

for (const { name, dims } of shapes) {
  test(`attention kernels match naive attention: ${name}, prefill then decode`, () => {
    const rnd = random(7 + dims.nHeads * 31 + dims.headDim);
    const maxPositions = 40;
    const kvRow = dims.nKvHeads * dims.headDim;
    const qRow = dims.nHeads * dims.headDim;
    // Large amplitude so softmax is peaked and the max-subtraction matters.
    const k = fill(maxPositions * kvRow, rnd, 3);
    const v = fill(maxPositions * kvRow, rnd);
    const scratch = createAttentionScratch();
    const online = createOnlineAttention(dims);
    // Prefill 13 positions in one call, then decode positions 13..39 one by one.
    const calls: [number, number][] = [[0, 13]];
    for (let p = 13; p < maxPositions; p++) calls.push([p, 1]);
    for (const [startPos, n] of calls) {
      const q = fill(n * qRow, rnd, 3);
      const expected = naiveAttention(dims, q, n, startPos, k, v);

      const out = new Float32Array(n * qRow);
      attendKvCache(dims, { q, qRow: 0, nQueries: n, startPos }, k, v, out, 0, scratch);
      assertClose(out, expected, 1e-5, `cache kernel at ${startPos}`);

      // Online kernel, blocks of 5 positions folded out of order (last block first).
      const blocks: [number, number][] = [];
      for (let b = 0; b < startPos + n; b += 5) blocks.push([b, Math.min(5, startPos + n - b)]);
      blocks.reverse();
      online.begin({ q, qRow: 0, nQueries: n, startPos });
      for (const [first, count] of blocks) {
        const kb = k.subarray(first * kvRow, (first + count) * kvRow);
        const vb = v.subarray(first * kvRow, (first + count) * kvRow);
        online.fold(first, count, kb, 0, vb, 0);
      }
      const out2 = new Float32Array(n * qRow);
      online.finish(out2, 0);
      assertClose(out2, expected, 1e-5, `online kernel at ${startPos}`);
      // The two kernels agree far more closely than either does with f32 rounding.
      assertClose(out2, out, 1e-6, `online vs cache kernel at ${startPos}`);
    }
  });
}

// The wasm SIMD kernel (f32 products within a 128-position block) against the
// JS f64 kernel and naive attention, over caches of several blocks; group 6
// runs the four-head and the one-head loops, headDim 5 falls back to JS.
const wasmShapes: { name: string; dims: AttentionDims }[] = [
  { name: "GQA 32 heads / 8 kv x 64", dims: { nHeads: 32, nKvHeads: 8, headDim: 64 } },
  { name: "GQA 6 heads / 1 kv x 8", dims: { nHeads: 6, nKvHeads: 1, headDim: 8 } },
  { name: "MHA 3 heads x 4", dims: { nHeads: 3, nKvHeads: 3, headDim: 4 } },
  { name: "MQA 2 heads / 1 kv x 5 (JS fallback)", dims: { nHeads: 2, nKvHeads: 1, headDim: 5 } },
];

test("WebAssembly SIMD kernels compile on this Node", () => {
  assert.notEqual(getWasmAttention(), undefined);
});

for (const { name, dims } of wasmShapes) {
  test(`wasm kernel matches the JS kernel and naive attention: ${name}`, () => {
    const rnd = random(5 + dims.nHeads * 7 + dims.headDim);
    const maxPositions = 300; // blocks of 128, 128 and 44
    const kvRow = dims.nKvHeads * dims.headDim;
    const qRow = dims.nHeads * dims.headDim;
    const k = fill(maxPositions * kvRow, rnd, 3);
    const v = fill(maxPositions * kvRow, rnd);
    const scratch = createAttentionScratch();
    // Prefill 130 positions, then decode at the block edges and the end.
    for (const [startPos, n] of [
      [0, 130],
      [255, 1],
      [256, 1],
      [299, 1],
    ] as const) {
      const q = fill(n * qRow, rnd, 3);
      const expected = naiveAttention(dims, q, n, startPos, k, v);
      const js = new Float32Array(n * qRow);
      attendKvCache(dims, { q, qRow: 0, nQueries: n, startPos }, k, v, js, 0, scratch, "js");
      const wasm = new Float32Array(n * qRow);
      attendKvCache(dims, { q, qRow: 0, nQueries: n, startPos }, k, v, wasm, 0, scratch, "wasm");
      assertClose(wasm, expected, 1e-5, `wasm kernel at ${startPos}`);
      assertClose(wasm, js, 1e-6, `wasm vs js kernel at ${startPos}`);
      if (dims.headDim % 4 !== 0) assert.deepEqual(wasm, js, "fallback is the JS kernel");
      // The default is the wasm kernel.
      const dflt = new Float32Array(n * qRow);
      attendKvCache(dims, { q, qRow: 0, nQueries: n, startPos }, k, v, dflt, 0, scratch);
      assert.deepEqual(dflt, wasm);
    }
  });
}

test("causality: a query ignores positions after its own", () => {
  const dims = { nHeads: 2, nKvHeads: 1, headDim: 4 };
  const rnd = random(3);
  const k = fill(10 * 4, rnd);
  const v = fill(10 * 4, rnd);
  const q = fill(3 * 8, rnd);
  const before = new Float32Array(3 * 8);
  attendKvCache(dims, { q, qRow: 0, nQueries: 3, startPos: 2 }, k, v, before, 0);
  // Scribble over positions 5..9, which none of the queries (positions 2, 3, 4) may see.
  k.fill(100, 5 * 4);
  v.fill(-100, 5 * 4);
  const after = new Float32Array(3 * 8);
  attendKvCache(dims, { q, qRow: 0, nQueries: 3, startPos: 2 }, k, v, after, 0);
  assert.deepEqual(after, before);
  const online = createOnlineAttention(dims);
  online.begin({ q, qRow: 0, nQueries: 3, startPos: 2 });
  online.fold(0, 10, k, 0, v, 0);
  const out = new Float32Array(3 * 8);
  online.finish(out, 0);
  assertClose(out, before, 1e-6, "online");
  // Position 0 with its own K only: the output is exactly its V row.
  const first = new Float32Array(8);
  attendKvCache(dims, { q, qRow: 0, nQueries: 1, startPos: 0 }, k, v, first, 0);
  assert.deepEqual(Array.from(first), [...v.subarray(0, 4), ...v.subarray(0, 4)]);
});

test("kernels read and write at row offsets", () => {
  const dims = { nHeads: 4, nKvHeads: 2, headDim: 3 };
  const rnd = random(11);
  const k = fill(8 * 6, rnd);
  const v = fill(8 * 6, rnd);
  const q = fill(5 * 12, rnd); // rows 2..3 are the queries
  const expected = naiveAttention(dims, q.subarray(2 * 12, 4 * 12), 2, 6, k, v);
  const out = new Float32Array(4 * 12).fill(9);
  attendKvCache(dims, { q, qRow: 2, nQueries: 2, startPos: 6 }, k, v, out, 1);
  assert.deepEqual(Array.from(out.subarray(0, 12)), new Array(12).fill(9));
  assertClose(out.subarray(12, 36), expected, 1e-5, "cache kernel");
  const online = createOnlineAttention(dims);
  online.begin({ q, qRow: 2, nQueries: 2, startPos: 6 });
  // K and V of positions 0..7 interleaved by position in one buffer, as a
  // storage-node block holds them: [K row 0, V row 0, K row 1, ...], stride 2 rows.
  const block = new Float32Array(16 * 6);
  for (let p = 0; p < 8; p++) {
    block.set(k.subarray(p * 6, p * 6 + 6), 2 * p * 6);
    block.set(v.subarray(p * 6, p * 6 + 6), 2 * p * 6 + 6);
  }
  online.fold(0, 3, block, 0, block, 6, 12);
  online.fold(3, 5, block, 3 * 12, block, 3 * 12 + 6, 12);
  const out2 = new Float32Array(2 * 12);
  online.finish(out2, 0);
  assertClose(out2, expected, 1e-5, "online kernel");
  // Packed rows at an element offset: positions 2..7 start at row 2.
  online.begin({ q, qRow: 2, nQueries: 2, startPos: 6 });
  online.fold(2, 6, k, 2 * 6, v, 2 * 6);
  online.fold(0, 2, k, 0, v, 0);
  const out3 = new Float32Array(2 * 12);
  online.finish(out3, 0);
  assertClose(out3, expected, 1e-5, "online kernel, offsets");
  assert.throws(() => online.fold(0, 9, k, 0, v, 0), /K\/V block holds fewer than 9 positions/);
});

test("online kernel refuses to finish a query that saw none of its positions", () => {
  const dims = { nHeads: 1, nKvHeads: 1, headDim: 2 };
  const online = createOnlineAttention(dims);
  online.begin({ q: new Float32Array([1, 0]), qRow: 0, nQueries: 1, startPos: 3 });
  online.fold(4, 2, new Float32Array(4), 0, new Float32Array(4), 0); // positions 4, 5: masked
  assert.throws(() => online.finish(new Float32Array(2), 0), /position 3\) saw no positions/);
});

test("planAttendRequest validates items against sequences", () => {
  const seq: AttendTarget = {
    layout: { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 3 },
    maxPositions: 10,
    layerLength: (layer) => (layer === 0 ? 4 : 3),
  };
  const lookup = (id: string) => (id === "a" ? seq : undefined);
  const req = (layer: number, items: { seqId: string; startPos: number; nTokens: number }[], t: number, nKv = 2) =>
    create(AttendRequestSchema, {
      layer,
      items,
      q: f32Tensor(new Float32Array(t * 12), [t, 4, 3]),
      k: f32Tensor(new Float32Array(t * nKv * 3), [t, nKv, 3]),
      v: f32Tensor(new Float32Array(t * nKv * 3), [t, nKv, 3]),
    });
  const plan = planAttendRequest(req(0, [{ seqId: "a", startPos: 4, nTokens: 2 }], 2), lookup, "node X");
  assert.deepEqual(
    plan.items.map((i) => [i.seqId, i.startPos, i.nTokens, i.row]),
    [["a", 4, 2, 0]],
  );
  assert.deepEqual(plan.dims, { nHeads: 4, nKvHeads: 2, headDim: 3 });
  const fails = (r: ReturnType<typeof req>, code: number, msg: RegExp) =>
    assert.throws(
      () => planAttendRequest(r, lookup, "node X"),
      (err: Error & { rpcCode?: number }) => {
        assert.equal(err.rpcCode, code);
        assert.match(err.message, msg);
        return true;
      },
    );
  fails(req(0, [{ seqId: "b", startPos: 0, nTokens: 1 }], 1), Code.NOT_FOUND, /^node X: layer 0: unknown sequence "b"/);
  fails(
    req(1, [{ seqId: "a", startPos: 4, nTokens: 1 }], 1),
    Code.OUT_OF_RANGE,
    /start_pos 4 leaves a gap after its 3 stored positions/,
  );
  fails(
    req(0, [{ seqId: "a", startPos: 4, nTokens: 7 }], 7),
    Code.OUT_OF_RANGE,
    /positions \[4, 11\) exceed its max_positions 10/,
  );
  fails(req(2, [{ seqId: "a", startPos: 0, nTokens: 1 }], 1), Code.INVALID_ARGUMENT, /has 2 layers/);
  fails(
    req(0, [{ seqId: "a", startPos: 0, nTokens: 1 }], 2),
    Code.INVALID_ARGUMENT,
    /items have 1 tokens in all, tensors have 2 rows/,
  );
  fails(req(0, [{ seqId: "a", startPos: 0, nTokens: 1 }], 1, 1), Code.INVALID_ARGUMENT, /n_kv_heads 2/);
  fails(
    req(
      0,
      [
        { seqId: "a", startPos: 0, nTokens: 1 },
        { seqId: "a", startPos: 1, nTokens: 1 },
      ],
      2,
    ),
    Code.INVALID_ARGUMENT,
    /appears twice/,
  );
});

test("kvSequenceBytes: max_positions x n_layers x 2 x n_kv_heads x head_dim x 4", () => {
  assert.equal(kvSequenceBytes({ nLayers: 5, nHeads: 8, nKvHeads: 4, headDim: 8 }, 256, "n"), 256 * 5 * 2 * 4 * 8 * 4);
  assert.throws(
    () => kvSequenceBytes({ nLayers: 5, nHeads: 6, nKvHeads: 4, headDim: 8 }, 256, "n"),
    /n: nHeads 6 is not a multiple of nKvHeads 4/,
  );
  assert.throws(() => kvSequenceBytes(undefined, 256, "n"), /n: layout is missing/);
  assert.throws(
    () => kvSequenceBytes({ nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 1 }, 0, "n"),
    /max_positions must be >= 1/,
  );
});
