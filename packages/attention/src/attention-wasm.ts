/**
 * Causal GQA attention on the WebAssembly SIMD kernels of wasm-attention.ts:
 * the online-softmax fold (FlashAttention's per-block rescaling, Dao et al.
 * 2022) of a sequence's queries over K/V rows that live in a
 * {@link WasmHeap} (the memory-node's KV cache, the storage-node's read
 * buffer: no copy), or that are copied into it block by block (any
 * Float32Array).
 *
 * Numerics: a block's products and weights are f32 (exp by a polynomial,
 * relative error < 2e-7), the running max is f32, the running sum and the
 * output accumulator are f64 across blocks; outputs agree with an f64
 * reference to ~1e-6 (relative to max(1, |value|)).
 */
import type { AttentionDims, CausalQueries } from "./dims.js";
import type { WasmHeap, WasmKernels } from "./wasm-attention.js";

/** Positions per block: a K (then V) block of [128, n_kv_heads, head_dim] f32 (256 KiB at 8 x 64) stays in L2. */
export const WASM_ATTENTION_BLOCK = 128;

/**
 * Query slots a state keeps when it grows on its own (doubling stops here):
 * callers that attend over a heap (attendKvCacheInHeap, attendKvCache, the
 * attention workers) split longer prefills into chunks of at most this many
 * queries, so a state's scratch is bounded whatever the prompt length:
 * about 24 x n_heads x head_dim bytes per slot (q f32, acc f64, m, l) plus
 * the fixed block buffers, e.g. 6.3 MiB at 32 heads x 128 and this value.
 */
export const ATTENTION_QUERY_CHUNK = 64;

/**
 * Bytes (within 64 per buffer, the heap's alignment) that
 * {@link createWasmAttention} allocates for `dims` with `slots` query
 * slots reserved: block scores, rescale factors and sums ([128, nhp] f32,
 * 2 x [nhp] f32, nhp = n_heads rounded up to 4), the block accumulator
 * ([n_heads, head_dim] f32), two staging blocks of K/V ([128, n_kv_heads,
 * head_dim] f32), and per slot q (f32), m (f32), l (f64), acc (f64).
 */
export function wasmAttentionBytes(dims: AttentionDims, slots: number): number {
  const nhp = (dims.nHeads + 3) & ~3;
  const qStride = dims.nHeads * dims.headDim;
  const kvRow = dims.nKvHeads * dims.headDim;
  const B = WASM_ATTENTION_BLOCK;
  return 4 * B * nhp + 8 * nhp + 4 * qStride + 8 * B * kvRow + slots * (12 * qStride + 12 * nhp);
}

/**
 * Checks that rows [0, nPositions) at element `offset` + t x `stride` of
 * `rows` ([.., rowLen] f32 each) lie inside it.
 * @param name "k" or "v", for the message.
 * @throws RangeError naming the array, its length and the length needed.
 */
export function checkKvRows(
  name: "k" | "v",
  rows: Float32Array,
  offset: number,
  nPositions: number,
  stride: number,
  rowLen: number,
): void {
  const need = offset + (nPositions - 1) * stride + rowLen;
  if (offset < 0 || rows.length < need) {
    throw new RangeError(
      `${name} block holds fewer than ${nPositions} positions: ${rows.length} floats, need ${need} (offset ${offset}, stride ${stride}, row ${rowLen})`,
    );
  }
}

/** Byte addresses of one state's buffers in its heap (see {@link WasmAttention.layout}). */
export interface WasmAttentionLayout {
  /** [block, nhp] f32 scores, then weights. */
  readonly s: number;
  /** [nhp] f32 rescale factors of the block. */
  readonly c: number;
  /** [nhp] f32 weight sums of the block. */
  readonly lsum: number;
  /** [n_heads, head_dim] f32 block accumulator (kept zeroed between blocks). */
  readonly a: number;
  /** [slots, n_heads, head_dim] f32 queries, pre-scaled by 1 / sqrt(head_dim). */
  readonly q: number;
  /** [slots, nhp] f32 running max. */
  readonly m: number;
  /** [slots, nhp] f64 running sum. */
  readonly l: number;
  /** [slots, n_heads, head_dim] f64 output accumulator. */
  readonly acc: number;
  /** Heads padded to a multiple of 4: the row length of s, m, c, lsum, l. */
  readonly nhp: number;
}

/**
 * Attention state and scratch of one layer shape in one heap: per query
 * slot, the query (pre-scaled, f32), the running max m, sum l (f64) and
 * output accumulator (f64), and the block buffers. A call works on a run of
 * slots (`slot0`, the queries of one sequence); several sequences can be in
 * flight in different slots. Not re-entrant.
 */
export interface WasmAttention {
  readonly heap: WasmHeap;
  readonly dims: AttentionDims;
  /**
   * Makes room for `slots` query slots (growing by doubling up to
   * {@link ATTENTION_QUERY_CHUNK}, exactly `slots` past it); may grow the
   * heap's memory, so call it before taking views that must see the new
   * pages (older views stay valid but are shorter).
   * @throws RangeError when the heap cannot grow.
   */
  reserve(slots: number): void;
  /** Query slots reserved now. */
  readonly capacity: number;
  /** Frees the state's allocations in the heap; the state must not be used afterwards. */
  dispose(): void;
  /** Current buffer addresses (they move when {@link reserve} grows the slots). */
  layout(): WasmAttentionLayout;
  /**
   * Starts the queries ([nQueries, n_heads, head_dim] f32 rows of `q` from
   * qRow) in slots slot0.., with empty state.
   * @throws RangeError when q is too short or the slots are not reserved.
   */
  begin(queries: CausalQueries, slot0?: number): void;
  /**
   * Folds positions [firstPos, firstPos + nPositions) into the queries begun
   * at slot0 (at positions startPos..): K row t at byte kPtr + t *
   * strideBytes of the heap, V row at vPtr + t * strideBytes ([n_kv_heads,
   * head_dim] f32 each). Positions after a query's own are masked out for
   * it. Blocks go outermost, so a prefill reads each block once for all its
   * queries while it sits in L2.
   */
  foldInHeap(
    firstPos: number,
    nPositions: number,
    kPtr: number,
    vPtr: number,
    strideBytes: number,
    slot0?: number,
    queries?: Pick<CausalQueries, "nQueries" | "startPos">,
  ): void;
  /**
   * The same for rows of any Float32Array (K row t at element kOffset + t *
   * stride of k, V likewise), copied into the heap a block at a time; for
   * the queries of the last {@link begin}.
   * @throws RangeError when the rows lie outside k or v.
   */
  foldCopy(
    firstPos: number,
    nPositions: number,
    k: Float32Array,
    kOffset: number,
    v: Float32Array,
    vOffset: number,
    stride: number,
  ): void;
  /**
   * Writes the outputs ([nQueries, n_heads * head_dim] f32) of the last
   * {@link begin}'s queries at row outRow of out.
   * @throws RangeError when a query saw no position.
   */
  finish(out: Float32Array, outRow: number): void;
}

/**
 * The fold loop of {@link WasmAttention.foldInHeap}, on raw kernels and
 * addresses, so that worker threads (attention-threads.ts) run exactly
 * this code on their own state. `qs` is the queries' first slot: its q, m,
 * l and acc addresses.
 */
export function foldBlocks(
  k: WasmKernels,
  d: {
    nHeads: number;
    nKvHeads: number;
    headDim: number;
    nhp: number;
    s: number;
    c: number;
    lsum: number;
    a: number;
  },
  qs: { q: number; m: number; l: number; acc: number },
  nQ: number,
  start: number,
  firstPos: number,
  nPositions: number,
  kp: number,
  vp: number,
  strideB: number,
): void {
  const B = WASM_ATTENTION_BLOCK;
  const group = d.nHeads / d.nKvHeads;
  const padB = 4 * (d.nhp - d.nHeads);
  const qStride = d.nHeads * d.headDim;
  for (let b = 0; b < nPositions; b += B) {
    const nb = Math.min(B, nPositions - b);
    for (let i = 0; i < nQ; i++) {
      // Causal mask: the query at position start + i sees positions <= its own.
      const n = Math.min(nb, start + i + 1 - (firstPos + b));
      if (n <= 0) continue;
      k.scores(qs.q + 4 * i * qStride, kp + b * strideB, d.s, n, strideB, d.nKvHeads, group, d.headDim, padB);
      k.softmax(d.s, qs.m + 4 * i * d.nhp, d.c, d.lsum, n, d.nhp);
      k.accumulate(d.s, vp + b * strideB, d.a, n, strideB, d.nKvHeads, group, d.headDim, padB);
      k.merge(d.a, qs.acc + 8 * i * qStride, d.c, d.lsum, qs.l + 8 * i * d.nhp, d.nHeads, d.headDim);
    }
  }
}

/**
 * Creates the attention state of `dims` in `heap` (allocating its scratch
 * there). head_dim must be a multiple of 4 (the kernels' f32x4 steps).
 * @throws RangeError when head_dim is not a multiple of 4 or the heap is full.
 */
export function createWasmAttention(heap: WasmHeap, dims: AttentionDims): WasmAttention {
  const { nHeads, nKvHeads, headDim } = dims;
  if (headDim % 4 !== 0) throw new RangeError(`wasm attention needs head_dim % 4 == 0, got ${headDim}`);
  const nhp = (nHeads + 3) & ~3;
  const qStride = nHeads * headDim;
  const kvRow = nKvHeads * headDim;
  const B = WASM_ATTENTION_BLOCK;
  const alloc = (bytes: number) => {
    const p = heap.alloc(bytes);
    if (p === undefined) throw new RangeError(`wasm heap cannot hold ${bytes} more bytes of attention scratch`);
    return p;
  };
  /** Byte offsets of consecutive 64-byte aligned parts of one allocation, and its size. */
  const carve = (sizes: number[]) => {
    const offsets: number[] = [];
    let total = 0;
    for (const b of sizes) {
      offsets.push(total);
      total += Math.ceil(b / 64) * 64;
    }
    return { offsets, total };
  };
  // The block buffers and the staging rows of foldCopy: one allocation.
  const fixedParts = carve([4 * B * nhp, 4 * nhp, 4 * nhp, 4 * qStride, 4 * B * kvRow, 4 * B * kvRow]);
  const base = alloc(fixedParts.total);
  const [sOff, cOff, lsumOff, aOff, kOff, vOff] = fixedParts.offsets.map((o) => base + o) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const fixed = { nHeads, nKvHeads, headDim, nhp, s: sOff, c: cOff, lsum: lsumOff, a: aOff };
  const stageK = kOff;
  const stageV = vOff;
  let capacity = 0;
  let slots = { q: 0, m: 0, l: 0, acc: 0 };
  // The last begin's queries.
  let last = { slot0: 0, nQ: 0, start: 0 };
  const scale = 1 / Math.sqrt(headDim);
  const at = (slot0: number) => ({
    q: slots.q + 4 * slot0 * qStride,
    m: slots.m + 4 * slot0 * nhp,
    l: slots.l + 8 * slot0 * nhp,
    acc: slots.acc + 8 * slot0 * qStride,
  });

  let slotsBase = 0;
  const freeSlots = () => {
    if (capacity > 0) heap.free(slotsBase);
    capacity = 0;
  };
  const reserve = (n: number) => {
    if (n <= capacity) return;
    const cap = Math.max(n, Math.min(2 * capacity, ATTENTION_QUERY_CHUNK), 1);
    freeSlots();
    const parts = carve([4 * cap * qStride, 4 * cap * nhp, 8 * cap * nhp, 8 * cap * qStride]);
    slotsBase = alloc(parts.total);
    const [q, m, l, acc] = parts.offsets.map((o) => slotsBase + o) as [number, number, number, number];
    slots = { q, m, l, acc };
    capacity = cap;
  };

  const foldInHeap: WasmAttention["foldInHeap"] = (firstPos, nPositions, kp, vp, strideB, slot0 = 0, queries) => {
    const nQ = queries ? queries.nQueries : last.nQ;
    const start = queries ? queries.startPos : last.start;
    foldBlocks(heap.kernels, fixed, at(slot0), nQ, start, firstPos, nPositions, kp, vp, strideB);
  };

  return {
    heap,
    dims,
    reserve,
    get capacity() {
      return capacity;
    },
    dispose() {
      freeSlots();
      heap.free(base);
    },
    layout: () => ({ ...fixed, ...slots }),
    begin({ q, qRow, nQueries, startPos }, slot0 = 0) {
      if (q.length < (qRow + nQueries) * qStride)
        throw new RangeError(`q has too few rows for ${nQueries} queries at row ${qRow}`);
      reserve(slot0 + nQueries);
      last = { slot0, nQ: nQueries, start: startPos };
      const f32 = heap.f32();
      const f64 = heap.f64();
      const p = at(slot0);
      const src = qRow * qStride;
      const dst = p.q / 4;
      for (let j = 0; j < nQueries * qStride; j++) f32[dst + j] = q[src + j]! * scale;
      f32.fill(-Infinity, p.m / 4, p.m / 4 + nQueries * nhp);
      f64.fill(0, p.l / 8, p.l / 8 + nQueries * nhp);
      f64.fill(0, p.acc / 8, p.acc / 8 + nQueries * qStride);
    },
    foldInHeap,
    foldCopy(firstPos, nPositions, kSrc, kOffset, vSrc, vOffset, stride) {
      if (nPositions <= 0) return;
      checkKvRows("k", kSrc, kOffset, nPositions, stride, kvRow);
      checkKvRows("v", vSrc, vOffset, nPositions, stride, kvRow);
      // Only the positions some query sees.
      const n = Math.min(nPositions, last.start + last.nQ - firstPos);
      for (let b = 0; b < n; b += B) {
        const nb = Math.min(B, n - b);
        const f32 = heap.f32();
        if (stride === kvRow) {
          f32.set(kSrc.subarray(kOffset + b * kvRow, kOffset + (b + nb) * kvRow), stageK / 4);
          f32.set(vSrc.subarray(vOffset + b * kvRow, vOffset + (b + nb) * kvRow), stageV / 4);
        } else {
          for (let t = 0; t < nb; t++) {
            const kr = kOffset + (b + t) * stride;
            const vr = vOffset + (b + t) * stride;
            f32.set(kSrc.subarray(kr, kr + kvRow), stageK / 4 + t * kvRow);
            f32.set(vSrc.subarray(vr, vr + kvRow), stageV / 4 + t * kvRow);
          }
        }
        foldInHeap(firstPos + b, nb, stageK, stageV, 4 * kvRow, last.slot0);
      }
    },
    finish(out, outRow) {
      writeOutputs(heap, [{ layout: { ...fixed, ...slots }, slot0: last.slot0 }], dims, last, out, outRow);
    },
  };
}

/**
 * Writes the outputs of queries whose positions were folded into one or
 * more states (each over a part of the positions; split-K as in
 * FlashDecoding, Dao et al. 2023): per head, the partial states combine as
 * m = max m_p, l = sum l_p e^(m_p - m), o = sum acc_p e^(m_p - m) / l.
 * @throws RangeError when a query saw no position in any part.
 */
export function writeOutputs(
  heap: WasmHeap,
  parts: { layout: WasmAttentionLayout; slot0: number }[],
  dims: AttentionDims,
  q: { nQ: number; start: number },
  out: Float32Array,
  outRow: number,
): void {
  const { nHeads, headDim } = dims;
  const qStride = nHeads * headDim;
  if (out.length < (outRow + q.nQ) * qStride)
    throw new RangeError(`out has too few rows for ${q.nQ} queries at row ${outRow}`);
  const f32 = heap.f32();
  const f64 = heap.f64();
  const oBase = outRow * qStride;
  const n = parts.length;
  // Hot (every query, head and dimension of every layer): plain indexed
  // loops over per-part offsets, no closures; one part (the decode case on
  // one thread) skips the merge weights.
  const w = new Float64Array(n);
  const mOff = new Int32Array(n);
  const lOff = new Int32Array(n);
  const accOff = new Int32Array(n);
  const nhp = new Int32Array(n);
  for (let j = 0; j < n; j++) {
    const p = parts[j]!;
    nhp[j] = p.layout.nhp;
    mOff[j] = p.layout.m / 4 + p.slot0 * p.layout.nhp;
    lOff[j] = p.layout.l / 8 + p.slot0 * p.layout.nhp;
    accOff[j] = p.layout.acc / 8 + p.slot0 * qStride;
  }
  for (let i = 0; i < q.nQ; i++) {
    for (let h = 0; h < nHeads; h++) {
      let m = -Infinity;
      for (let j = 0; j < n; j++) m = Math.max(m, f32[mOff[j]! + i * nhp[j]! + h]!);
      let sum = 0;
      for (let j = 0; j < n; j++) {
        const mp = f32[mOff[j]! + i * nhp[j]! + h]!;
        w[j] = mp === -Infinity ? 0 : Math.exp(mp - m);
        sum += w[j]! * f64[lOff[j]! + i * nhp[j]! + h]!;
      }
      if (!(sum > 0)) throw new RangeError(`query ${i} (position ${q.start + i}) saw no positions`);
      const o = oBase + i * qStride + h * headDim;
      const row = i * qStride + h * headDim;
      if (n === 1) {
        const a = accOff[0]! + row;
        const scale = w[0]! / sum;
        for (let d = 0; d < headDim; d++) out[o + d] = scale * f64[a + d]!;
        continue;
      }
      for (let d = 0; d < headDim; d++) {
        let acc = 0;
        for (let j = 0; j < n; j++) if (w[j]! > 0) acc += w[j]! * f64[accOff[j]! + row + d]!;
        out[o + d] = acc / sum;
      }
    }
  }
}
