import { test } from "node:test";
import assert from "node:assert/strict";
import { f32Tensor } from "@tessera/core";
import {
  attendKvCache,
  attendKvCacheInHeap,
  createAttentionScratch,
  createAttentionWorkers,
  createWasmAttention,
  createOnlineAttention,
  createWasmHeap,
  planAttendRequest,
  kvSequenceBytes,
  wasmAttentionBytes,
  ATTENTION_QUERY_CHUNK,
  type AttentionDims,
  type AttendTarget,
  type WasmHeap,
} from "@tessera/attention";
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
  assert.notEqual(createWasmHeap(), undefined);
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
  assert.throws(() => online.fold(0, 9, k, 0, v, 0), /k block holds fewer than 9 positions: 48 floats, need 54/);
  const longK = new Float32Array(9 * 6);
  assert.throws(() => online.fold(0, 9, longK, 0, v, 0), /v block holds fewer than 9 positions: 48 floats, need 54/);
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

test("wasm heap: zeroed, aligned allocations; freed space is reused; a full heap says so", () => {
  const heap = createWasmHeap();
  assert.ok(heap);
  const a = heap.alloc(100)!;
  const b = heap.alloc(1000)!;
  assert.equal(a % 64, 0);
  assert.equal(b % 64, 0);
  assert.ok(b >= a + 100);
  heap.f32().fill(7, a / 4, a / 4 + 25);
  heap.free(a);
  assert.throws(() => heap.free(a), /not an allocation/);
  const c = heap.alloc(64)!;
  assert.equal(c, a, "first fit reuses the freed block");
  assert.deepEqual(Array.from(heap.f32().subarray(c / 4, c / 4 + 16)), new Array(16).fill(0));
  heap.f32().fill(9, b / 4, b / 4 + 250);
  heap.free(b); // the top block: its space goes back to the end of the heap
  const d = heap.alloc(2000)!;
  assert.ok(d <= b, "the end of the heap is reused");
  assert.ok(
    heap
      .f32()
      .subarray(b / 4, b / 4 + 250)
      .every((x) => x === 0),
    "space given back to the end is zeroed again",
  );
  heap.free(d);
  heap.free(c);
  assert.equal(heap.usedBytes, 0);
  assert.equal(heap.alloc(2 ** 32 + 1), undefined, "past the 4 GiB of wasm32");
});

test("KV cache in a wasm heap: several GQA sequences, prefill then decode, match naive attention", () => {
  const heap = createWasmHeap()!;
  const dims = { nHeads: 8, nKvHeads: 2, headDim: 16 };
  const kvRow = dims.nKvHeads * dims.headDim;
  const qRow = dims.nHeads * dims.headDim;
  const maxPositions = 300;
  const wasm = createWasmAttention(heap, dims);
  const rnd = random(21);
  // Three sequences, their K and V buffers interleaved in one heap.
  const seqs = [0, 1, 2].map(() => ({
    kPtr: heap.alloc(4 * maxPositions * kvRow)!,
    vPtr: heap.alloc(4 * maxPositions * kvRow)!,
  }));
  const ref = seqs.map(() => ({
    k: new Float32Array(maxPositions * kvRow),
    v: new Float32Array(maxPositions * kvRow),
  }));
  const steps: [number, number][] = [
    [0, 140], // prefill over more than one 128-position block
    [140, 1],
    [141, 115], // a second prefill chunk, up to the end of block 2
    [256, 1],
    [257, 1],
  ];
  for (const [startPos, n] of steps) {
    for (let s = 0; s < seqs.length; s++) {
      const k = fill(n * kvRow, rnd, 3);
      const v = fill(n * kvRow, rnd);
      const q = fill(n * qRow, rnd, 3);
      wasm.reserve(n);
      heap.f32().set(k, seqs[s]!.kPtr / 4 + startPos * kvRow);
      heap.f32().set(v, seqs[s]!.vPtr / 4 + startPos * kvRow);
      ref[s]!.k.set(k, startPos * kvRow);
      ref[s]!.v.set(v, startPos * kvRow);
      const out = new Float32Array((n + 1) * qRow).fill(5);
      attendKvCacheInHeap(wasm, { q, qRow: 0, nQueries: n, startPos }, seqs[s]!.kPtr, seqs[s]!.vPtr, out, 1);
      assert.deepEqual(Array.from(out.subarray(0, qRow)), new Array(qRow).fill(5), "row 0 untouched");
      const expected = naiveAttention(dims, q, n, startPos, ref[s]!.k, ref[s]!.v);
      assertClose(out.subarray(qRow), expected, 1e-5, `sequence ${s} at ${startPos}`);
      const js = new Float32Array(n * qRow);
      attendKvCache(dims, { q, qRow: 0, nQueries: n, startPos }, ref[s]!.k, ref[s]!.v, js, 0, undefined, "js");
      assertClose(out.subarray(qRow), js, 1e-6, `sequence ${s} at ${startPos}, vs the JS kernel`);
    }
  }
});

test("online kernel on a heap reads views of it in place and copies other rows, with the same result", () => {
  const heap = createWasmHeap()!;
  const dims = { nHeads: 32, nKvHeads: 8, headDim: 64 };
  const kvRow = dims.nKvHeads * dims.headDim;
  const qRow = dims.nHeads * dims.headDim;
  const n = 200;
  const rnd = random(33);
  const online = createOnlineAttention(dims, { heap });
  online.reserve(2);
  // K and V interleaved by position, as the storage-node's read buffer holds them.
  const ptr = heap.alloc(4 * n * 2 * kvRow)!;
  const block = new Float32Array(heap.buffer, ptr, n * 2 * kvRow);
  block.set(fill(n * 2 * kvRow, rnd, 3));
  const plain = block.slice();
  const q = fill(2 * qRow, rnd, 3);
  const k = new Float32Array(n * kvRow);
  const v = new Float32Array(n * kvRow);
  for (let p = 0; p < n; p++) {
    k.set(plain.subarray(2 * p * kvRow, (2 * p + 1) * kvRow), p * kvRow);
    v.set(plain.subarray((2 * p + 1) * kvRow, (2 * p + 2) * kvRow), p * kvRow);
  }
  const expected = naiveAttention(dims, q, 2, n - 2, k, v);
  for (const src of [block, plain]) {
    online.begin({ q, qRow: 0, nQueries: 2, startPos: n - 2 });
    online.fold(150, 50, src, 150 * 2 * kvRow, src, 150 * 2 * kvRow + kvRow, 2 * kvRow);
    online.fold(0, 150, src, 0, src, kvRow, 2 * kvRow);
    const out = new Float32Array(2 * qRow);
    online.finish(out, 0);
    assertClose(out, expected, 1e-5, src === block ? "in place" : "copied");
  }
});

test("attention workers: sequences split across 3 threads give the naive answer (decode, prefill, short)", async (t) => {
  const heap = createWasmHeap()!;
  const pool = createAttentionWorkers(heap, 3);
  t.after(() => pool.close());
  assert.equal(pool.threads, 3);
  const dims = { nHeads: 32, nKvHeads: 8, headDim: 64 };
  const kvRow = dims.nKvHeads * dims.headDim;
  const qRow = dims.nHeads * dims.headDim;
  const P = 700;
  const rnd = random(44);
  const seqs = [0, 1, 2].map(() => {
    const k = fill(P * kvRow, rnd, 3);
    const v = fill(P * kvRow, rnd);
    const kPtr = heap.alloc(4 * P * kvRow)!;
    const vPtr = heap.alloc(4 * P * kvRow)!;
    heap.f32().set(k, kPtr / 4);
    heap.f32().set(v, vPtr / 4);
    return { k, v, kPtr, vPtr };
  });
  // Decode at the end of a long cache and a 40-token prefill (both past
  // SPLIT_MIN_BYTES: split), and a short decode (not split).
  const items = [
    { s: 0, startPos: 699, n: 1 },
    { s: 1, startPos: 0, n: 40 },
    { s: 2, startPos: 9, n: 1 },
  ];
  const q = fill(42 * qRow, rnd, 3);
  const out = new Float32Array(42 * qRow);
  let row = 0;
  const heapItems = items.map((it) => {
    const r = row;
    row += it.n;
    const s = seqs[it.s]!;
    return { queries: { q, qRow: r, nQueries: it.n, startPos: it.startPos }, kPtr: s.kPtr, vPtr: s.vPtr, outRow: r };
  });
  for (let rep = 0; rep < 2; rep++) {
    pool.attend(dims, heapItems, out);
    row = 0;
    for (const it of items) {
      const s = seqs[it.s]!;
      const expected = naiveAttention(dims, q.subarray(row * qRow, (row + it.n) * qRow), it.n, it.startPos, s.k, s.v);
      assertClose(out.subarray(row * qRow, (row + it.n) * qRow), expected, 1e-5, `item ${it.s}, call ${rep}`);
      row += it.n;
    }
  }
});

test("attention workers: many short sequences go whole to the threads and give the naive answer", async (t) => {
  const heap = createWasmHeap()!;
  const pool = createAttentionWorkers(heap, 2);
  t.after(() => pool.close());
  const dims = { nHeads: 32, nKvHeads: 8, headDim: 64 };
  const kvRow = dims.nKvHeads * dims.headDim;
  const qRow = dims.nHeads * dims.headDim;
  const P = 300; // 2 x 300 x 2 KiB = 1.2 MB each: under SPLIT_MIN_BYTES, 7 MB in all: over it
  const rnd = random(55);
  const seqs = Array.from({ length: 6 }, () => {
    const k = fill(P * kvRow, rnd, 3);
    const v = fill(P * kvRow, rnd);
    const kPtr = heap.alloc(4 * P * kvRow)!;
    const vPtr = heap.alloc(4 * P * kvRow)!;
    heap.f32().set(k, kPtr / 4);
    heap.f32().set(v, vPtr / 4);
    return { k, v, kPtr, vPtr };
  });
  const q = fill(seqs.length * qRow, rnd, 3);
  const out = new Float32Array(seqs.length * qRow);
  pool.attend(
    dims,
    seqs.map((s, i) => ({
      queries: { q, qRow: i, nQueries: 1, startPos: P - 1 },
      kPtr: s.kPtr,
      vPtr: s.vPtr,
      outRow: i,
    })),
    out,
  );
  seqs.forEach((s, i) => {
    const expected = naiveAttention(dims, q.subarray(i * qRow, (i + 1) * qRow), 1, P - 1, s.k, s.v);
    assertClose(out.subarray(i * qRow, (i + 1) * qRow), expected, 1e-5, `sequence ${i}`);
  });
});

/** `n` sequences of `P` positions of random K/V in `heap`. */
function heapSequences(heap: WasmHeap, dims: AttentionDims, n: number, P: number, rnd: () => number) {
  const kvRow = dims.nKvHeads * dims.headDim;
  return Array.from({ length: n }, () => {
    const k = fill(P * kvRow, rnd, 3);
    const v = fill(P * kvRow, rnd);
    const kPtr = heap.alloc(4 * P * kvRow)!;
    const vPtr = heap.alloc(4 * P * kvRow)!;
    heap.f32().set(k, kPtr / 4);
    heap.f32().set(v, vPtr / 4);
    return { k, v, kPtr, vPtr };
  });
}

for (const fault of ["setup", "job"] as const) {
  test(`attention workers: a worker that fails (${fault}) does not fail the call; it is redone on the calling thread and logged`, async (t) => {
    const heap = createWasmHeap()!;
    const lines: string[] = [];
    const pool = createAttentionWorkers(heap, 3, { fault, log: (l) => lines.push(l) });
    t.after(() => pool.close());
    const dims = { nHeads: 32, nKvHeads: 8, headDim: 64 };
    const qRow = dims.nHeads * dims.headDim;
    const P = 700; // 2 x 700 x 2 KiB of K/V: past SPLIT_MIN_BYTES, so the workers get shares
    const [s] = heapSequences(heap, dims, 1, P, random(66));
    const q = fill(2 * qRow, random(67), 3);
    const expected = naiveAttention(dims, q, 2, P - 2, s!.k, s!.v);
    for (let call = 0; call < 2; call++) {
      const out = new Float32Array(2 * qRow);
      pool.attend(
        dims,
        [{ queries: { q, qRow: 0, nQueries: 2, startPos: P - 2 }, kPtr: s!.kPtr, vPtr: s!.vPtr, outRow: 0 }],
        out,
      );
      assertClose(out, expected, 1e-5, `call ${call}`);
      assert.equal(pool.threads, 1, "the broken pool runs on the calling thread");
    }
    // Let the workers' 'error' and 'exit' events arrive: the process survives them.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(
      lines[0]!,
      new RegExp(`attention workers: worker \\d .*injected fault ${fault === "setup" ? "at set-up" : "in a job"}`),
    );
  });
}

test("two online attentions with the same dims, interleaved, keep their own queries and state", () => {
  const dims = { nHeads: 8, nKvHeads: 2, headDim: 16 };
  const kvRow = dims.nKvHeads * dims.headDim;
  const qRow = dims.nHeads * dims.headDim;
  const rnd = random(77);
  const P = 300;
  const k = fill(P * kvRow, rnd, 3);
  const v = fill(P * kvRow, rnd);
  const qa = fill(3 * qRow, rnd, 3);
  const qb = fill(2 * qRow, rnd, 3);
  const a = createOnlineAttention(dims);
  const b = createOnlineAttention(dims);
  a.begin({ q: qa, qRow: 0, nQueries: 3, startPos: P - 3 });
  b.begin({ q: qb, qRow: 0, nQueries: 2, startPos: 100 });
  a.fold(0, 150, k, 0, v, 0);
  b.fold(0, 102, k, 0, v, 0);
  a.fold(150, P - 150, k, 150 * kvRow, v, 150 * kvRow);
  const outA = new Float32Array(3 * qRow);
  const outB = new Float32Array(2 * qRow);
  b.finish(outB, 0);
  a.finish(outA, 0);
  assertClose(outA, naiveAttention(dims, qa, 3, P - 3, k, v), 1e-5, "first");
  assertClose(outB, naiveAttention(dims, qb, 2, 100, k, v), 1e-5, "second");
});

test("a long prefill goes in query chunks: the state stays at ATTENTION_QUERY_CHUNK slots, outputs match naive attention", async (t) => {
  const heap = createWasmHeap()!;
  const dims = { nHeads: 8, nKvHeads: 2, headDim: 16 };
  const qRow = dims.nHeads * dims.headDim;
  const n = 3 * ATTENTION_QUERY_CHUNK + 5;
  const rnd = random(88);
  const [s] = heapSequences(heap, dims, 1, n, rnd);
  const q = fill(n * qRow, rnd, 3);
  const expected = naiveAttention(dims, q, n, 0, s!.k, s!.v);
  const queries = { q, qRow: 0, nQueries: n, startPos: 0 };
  const wasm = createWasmAttention(heap, dims);
  const out = new Float32Array(n * qRow);
  attendKvCacheInHeap(wasm, queries, s!.kPtr, s!.vPtr, out, 0);
  assertClose(out, expected, 1e-5, "attendKvCacheInHeap");
  assert.equal(wasm.capacity, ATTENTION_QUERY_CHUNK);
  const js = new Float32Array(n * qRow);
  attendKvCache(dims, queries, s!.k, s!.v, js, 0);
  assertClose(js, expected, 1e-5, "attendKvCache (copied)");
  const pool = createAttentionWorkers(heap, 2);
  t.after(() => pool.close());
  const used = heap.usedBytes;
  const pooled = new Float32Array(n * qRow);
  pool.attend(dims, [{ queries, kPtr: s!.kPtr, vPtr: s!.vPtr, outRow: 0 }], pooled);
  assertClose(pooled, expected, 1e-5, "attention workers");
  // At most one state per thread, each with ATTENTION_QUERY_CHUNK slots (plus job tables).
  assert.ok(heap.usedBytes - used <= 2 * (wasmAttentionBytes(dims, ATTENTION_QUERY_CHUNK) + 64 * 8 + 8 * 19 * 64));
});

test("online kernel reads a view of its heap taken before the heap grew in place", () => {
  const heap = createWasmHeap()!;
  const dims = { nHeads: 4, nKvHeads: 2, headDim: 8 };
  const kvRow = dims.nKvHeads * dims.headDim;
  const qRow = dims.nHeads * dims.headDim;
  const rnd = random(99);
  const online = createOnlineAttention(dims, { heap });
  online.reserve(1);
  const P = 20;
  const kPtr = heap.alloc(4 * P * kvRow)!;
  const vPtr = heap.alloc(4 * P * kvRow)!;
  const k = new Float32Array(heap.buffer, kPtr, P * kvRow);
  const v = new Float32Array(heap.buffer, vPtr, P * kvRow);
  k.set(fill(P * kvRow, rnd, 3));
  v.set(fill(P * kvRow, rnd));
  const before = heap.byteLength;
  assert.ok(heap.alloc(4 * before) !== undefined);
  assert.ok(heap.byteLength > before, "the heap grew");
  assert.notEqual(k.buffer, heap.buffer, "the old view has the old buffer object");
  assert.ok(heap.ownsBuffer(k.buffer) && !heap.ownsBuffer(new ArrayBuffer(8)));
  const q = fill(qRow, rnd, 3);
  online.begin({ q, qRow: 0, nQueries: 1, startPos: P - 1 });
  online.fold(0, P, k, 0, v, 0);
  const out = new Float32Array(qRow);
  online.finish(out, 0);
  assertClose(out, naiveAttention(dims, q, 1, P - 1, k.slice(), v.slice()), 1e-5, "old view");
});
