/**
 * The JS attention kernel ("js"): scalar causal GQA attention in plain
 * JavaScript, for the memory-node's plain-array KV cache and the
 * storage-node's blocks (shapes: see registry.ts and dims.ts). It keeps
 * scores, softmax sums and output accumulators in f64 (JS numbers and
 * Float64Array scratch) while K/V stay f32, so it agrees with a plain f64
 * reference to ~1e-12 whatever the block size. The WebAssembly SIMD kernel
 * (wasm.ts) falls back to it where WebAssembly SIMD is missing or head_dim
 * is not a multiple of 4.
 */
import { checkKvRows } from "../attention-wasm.js";
import type { AttentionWorkers } from "../attention-threads.js";
import { checkAttentionDims, checkKvCacheCall, type AttentionDims, type CausalQueries } from "../dims.js";
import type { WasmHeap } from "../wasm-attention.js";
import type { AttentionKernel, AttentionScratch, OnlineAttention } from "./registry.js";

/** Empty scratch; grown on demand by the kernels. */
export function createAttentionScratch(): AttentionScratch {
  return { scores: new Float64Array(0), qGroup: new Float64Array(0), acc: new Float64Array(0) };
}

function grow(a: Float64Array, n: number): Float64Array {
  return a.length >= n ? a : new Float64Array(Math.max(n, a.length * 2));
}

// Hot-loop helpers. Up to four heads of a GQA group per pass share each K/V
// element load and give the CPU four independent add chains (V8 emits
// scalar f64 code; the chains, not the loads, bound it).

/** s[sOff + j] = qs[q0 + j * n..] . k[kOff..kOff + n) for j < 4 (four adjacent heads). */
function scoresQuad(
  qs: Float64Array,
  q0: number,
  k: Float32Array,
  kOff: number,
  n: number,
  s: Float64Array,
  sOff: number,
): void {
  const q1 = q0 + n;
  const q2 = q1 + n;
  const q3 = q2 + n;
  let a0 = 0;
  let a1 = 0;
  let a2 = 0;
  let a3 = 0;
  for (let d = 0; d < n; d++) {
    const x = k[kOff + d]!;
    a0 += qs[q0 + d]! * x;
    a1 += qs[q1 + d]! * x;
    a2 += qs[q2 + d]! * x;
    a3 += qs[q3 + d]! * x;
  }
  s[sOff] = a0;
  s[sOff + 1] = a1;
  s[sOff + 2] = a2;
  s[sOff + 3] = a3;
}

/** s[sOff] = qs[q0..] . k[kOff..], s[sOff + 1] = qs[q0 + n..] . k[kOff..] (two adjacent heads). */
function scoresPair(
  qs: Float64Array,
  q0: number,
  k: Float32Array,
  kOff: number,
  n: number,
  s: Float64Array,
  sOff: number,
): void {
  const q1 = q0 + n;
  let a0 = 0;
  let a1 = 0;
  let b0 = 0;
  let b1 = 0;
  let d = 0;
  for (; d + 1 < n; d += 2) {
    const x = k[kOff + d]!;
    const y = k[kOff + d + 1]!;
    a0 += qs[q0 + d]! * x;
    a1 += qs[q0 + d + 1]! * y;
    b0 += qs[q1 + d]! * x;
    b1 += qs[q1 + d + 1]! * y;
  }
  if (d < n) {
    const x = k[kOff + d]!;
    a0 += qs[q0 + d]! * x;
    b0 += qs[q1 + d]! * x;
  }
  s[sOff] = a0 + a1;
  s[sOff + 1] = b0 + b1;
}

/** qs[q0..q0+n) . k[kOff..kOff+n) */
function dot(qs: Float64Array, q0: number, k: Float32Array, kOff: number, n: number): number {
  let a0 = 0;
  let a1 = 0;
  let d = 0;
  for (; d + 1 < n; d += 2) {
    a0 += qs[q0 + d]! * k[kOff + d]!;
    a1 += qs[q0 + d + 1]! * k[kOff + d + 1]!;
  }
  if (d < n) a0 += qs[q0 + d]! * k[kOff + d]!;
  return a0 + a1;
}

/** acc[a0 + j * n..] += w[wOff + j] * v[vOff..vOff + n) for j < 4 (four adjacent heads). */
function axpyQuad(
  w: Float64Array,
  wOff: number,
  v: Float32Array,
  vOff: number,
  acc: Float64Array,
  a0: number,
  n: number,
): void {
  const w0 = w[wOff]!;
  const w1 = w[wOff + 1]!;
  const w2 = w[wOff + 2]!;
  const w3 = w[wOff + 3]!;
  const a1 = a0 + n;
  const a2 = a1 + n;
  const a3 = a2 + n;
  for (let d = 0; d < n; d++) {
    const x = v[vOff + d]!;
    acc[a0 + d]! += w0 * x;
    acc[a1 + d]! += w1 * x;
    acc[a2 + d]! += w2 * x;
    acc[a3 + d]! += w3 * x;
  }
}

/** acc[a0..a0+n) += w * v[vOff..vOff+n) */
function axpy(w: number, v: Float32Array, vOff: number, acc: Float64Array, a0: number, n: number): void {
  for (let d = 0; d < n; d++) acc[a0 + d]! += w * v[vOff + d]!;
}

/** Positions per block of {@link foldQuery}: its scores ([block, n_heads] f64, 32 KiB at 32 heads) stay in L1. */
const BLOCK = 128;

/**
 * Online-softmax fold of one query (all heads) over positions t < n whose K
 * row ([n_kv_heads, head_dim] f32) is at k[kOff + t * stride..] and V row at
 * v[vOff + t * stride..], into the running max `m`, sum `l` ([n_heads] f64 at
 * `h0`) and output accumulator `acc` ([n_heads, head_dim] f64 at
 * h0 * head_dim). `qs` holds the query pre-scaled by 1 / sqrt(head_dim) at
 * `q0`. Positions go in blocks of {@link BLOCK}: scores of a block for every
 * head (reading each K row once, front to back, so the hardware prefetcher
 * streams it), the block's max raises the running one (rescaling what came
 * before once per block, as FlashAttention does), then the weighted V rows.
 * `s` is scratch of >= BLOCK * n_heads, `bmax` of >= n_heads.
 */
function foldQuery(
  nHeads: number,
  nKvHeads: number,
  headDim: number,
  qs: Float64Array,
  q0: number,
  m: Float64Array,
  l: Float64Array,
  acc: Float64Array,
  h0: number,
  k: Float32Array,
  kOff: number,
  v: Float32Array,
  vOff: number,
  stride: number,
  n: number,
  s: Float64Array,
  bmax: Float64Array,
): void {
  const group = nHeads / nKvHeads;
  const a0 = h0 * headDim;
  for (let b = 0; b < n; b += BLOCK) {
    const nb = Math.min(BLOCK, n - b);
    // Scores s[t * nHeads + h].
    for (let t = 0; t < nb; t++) {
      const kRow = kOff + (b + t) * stride;
      const sRow = t * nHeads;
      for (let g = 0; g < nKvHeads; g++) {
        const kh = kRow + g * headDim;
        const hg = g * group;
        let j = 0;
        for (; j + 3 < group; j += 4) scoresQuad(qs, q0 + (hg + j) * headDim, k, kh, headDim, s, sRow + hg + j);
        for (; j + 1 < group; j += 2) scoresPair(qs, q0 + (hg + j) * headDim, k, kh, headDim, s, sRow + hg + j);
        if (j < group) s[sRow + hg + j] = dot(qs, q0 + (hg + j) * headDim, k, kh, headDim);
      }
    }
    // Raise the running max to the block's; rescale what came before.
    bmax.fill(-Infinity, 0, nHeads);
    for (let t = 0; t < nb; t++) {
      const sRow = t * nHeads;
      for (let h = 0; h < nHeads; h++) if (s[sRow + h]! > bmax[h]!) bmax[h] = s[sRow + h]!;
    }
    for (let h = 0; h < nHeads; h++) {
      const old = m[h0 + h]!;
      if (bmax[h]! > old) {
        const c = old === -Infinity ? 0 : Math.exp(old - bmax[h]!);
        l[h0 + h]! *= c;
        const aOff = a0 + h * headDim;
        for (let d = 0; d < headDim; d++) acc[aOff + d]! *= c;
        m[h0 + h] = bmax[h]!;
      }
    }
    // Unnormalised weights (normalised once, at the end).
    for (let t = 0; t < nb; t++) {
      const sRow = t * nHeads;
      for (let h = 0; h < nHeads; h++) {
        const w = Math.exp(s[sRow + h]! - m[h0 + h]!);
        s[sRow + h] = w;
        l[h0 + h]! += w;
      }
    }
    // Weighted sum of V rows.
    for (let t = 0; t < nb; t++) {
      const vRow = vOff + (b + t) * stride;
      const sRow = t * nHeads;
      for (let g = 0; g < nKvHeads; g++) {
        const vh = vRow + g * headDim;
        const hg = g * group;
        let j = 0;
        for (; j + 3 < group; j += 4) axpyQuad(s, sRow + hg + j, v, vh, acc, a0 + (hg + j) * headDim, headDim);
        for (; j < group; j++) axpy(s[sRow + hg + j]!, v, vh, acc, a0 + (hg + j) * headDim, headDim);
      }
    }
  }
}

/**
 * Causal attention of consecutive queries of one sequence over K/V rows held
 * in contiguous buffers (the memory-node's plain cache): see
 * {@link AttentionKernel.attendKvCache}.
 *
 * The decode hot path (1 query over a long cache). Per query, positions go
 * in blocks of 128 with an online softmax (the same `foldQuery` as the
 * online accumulator), not llama2.c's two passes over the whole
 * cache: a block's scores ([128, n_heads] f64) stay in L1 instead of a
 * [positions, group] array streaming through L2, each K and V row is read
 * once, front to back, for all heads, and up to four heads of a GQA group
 * share each element load. Plain scalar JS: about 1.6x the two-pass kernel
 * but still compute-bound at ~3% of memory bandwidth (bench/attention.ts).
 * @throws RangeError when the dims are bad or the buffers too short for the
 *   positions asked.
 */
function jsAttendKvCache(
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
  scratch: AttentionScratch,
): void {
  checkKvCacheCall(dims, queries, k, v, out, outRow);
  const { nHeads, nKvHeads, headDim } = dims;
  const { q, qRow, nQueries, startPos } = queries;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const scale = 1 / Math.sqrt(headDim);
  scratch.qGroup = grow(scratch.qGroup, qStride);
  scratch.acc = grow(scratch.acc, qStride);
  scratch.scores = grow(scratch.scores, BLOCK * nHeads);
  const qs = scratch.qGroup;
  const acc = scratch.acc;
  const m = new Float64Array(nHeads);
  const l = new Float64Array(nHeads);
  const bmax = new Float64Array(nHeads);

  for (let i = 0; i < nQueries; i++) {
    const qBase = (qRow + i) * qStride;
    const oBase = (outRow + i) * qStride;
    m.fill(-Infinity);
    l.fill(0);
    acc.fill(0, 0, qStride);
    // Pre-scaled f64 copy of the query: contiguous, no scale in the loop.
    for (let j = 0; j < qStride; j++) qs[j] = q[qBase + j]! * scale;
    // Positions [0, startPos + i].
    foldQuery(
      nHeads,
      nKvHeads,
      headDim,
      qs,
      0,
      m,
      l,
      acc,
      0,
      k,
      0,
      v,
      0,
      kvRow,
      startPos + i + 1,
      scratch.scores,
      bmax,
    );
    for (let h = 0; h < nHeads; h++) {
      const inv = 1 / l[h]!;
      const aOff = h * headDim;
      for (let d = 0; d < headDim; d++) out[oBase + aOff + d] = acc[aOff + d]! * inv;
    }
  }
}

/**
 * The JS {@link OnlineAttention}: per query and head a running max, sum and
 * f64 accumulator, folded block by block with `foldQuery`.
 * @throws RangeError when the dims are bad.
 */
function createJsOnlineAttention(dims: AttentionDims): OnlineAttention {
  checkAttentionDims(dims);
  const { nHeads, nKvHeads, headDim } = dims;
  const kvRowLen = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const scale = 1 / Math.sqrt(headDim);
  let m: Float64Array = new Float64Array(0); // [queries, n_heads] running max
  let l: Float64Array = new Float64Array(0); // [queries, n_heads] running sum
  let acc: Float64Array = new Float64Array(0); // [queries, n_heads, head_dim]
  let qs: Float64Array = new Float64Array(0); // [queries, n_heads, head_dim], pre-scaled
  let s: Float64Array = new Float64Array(0); // [BLOCK, n_heads] scores
  const bmax = new Float64Array(nHeads);
  let nQ = 0;
  let start = 0;

  return {
    reserve() {},
    begin({ q, qRow, nQueries, startPos }) {
      if (q.length < (qRow + nQueries) * qStride)
        throw new RangeError(`q has too few rows for ${nQueries} queries at row ${qRow}`);
      nQ = nQueries;
      start = startPos;
      m = grow(m, nQ * nHeads);
      l = grow(l, nQ * nHeads);
      acc = grow(acc, nQ * qStride);
      qs = grow(qs, nQ * qStride);
      m.fill(-Infinity, 0, nQ * nHeads);
      l.fill(0, 0, nQ * nHeads);
      acc.fill(0, 0, nQ * qStride);
      const src = qRow * qStride;
      for (let i = 0; i < nQ * qStride; i++) qs[i] = q[src + i]! * scale;
    },

    fold(firstPos, nPositions, k, kOffset, v, vOffset, stride = kvRowLen) {
      if (nPositions <= 0) return;
      checkKvRows("k", k, kOffset, nPositions, stride, kvRowLen);
      checkKvRows("v", v, vOffset, nPositions, stride, kvRowLen);
      s = grow(s, BLOCK * nHeads);
      for (let i = 0; i < nQ; i++) {
        // Causal mask: query at position p sees [firstPos, min(end, p + 1)).
        const n = Math.min(nPositions, start + i + 1 - firstPos);
        if (n <= 0) continue;
        const h0 = i * nHeads;
        foldQuery(
          nHeads,
          nKvHeads,
          headDim,
          qs,
          h0 * headDim,
          m,
          l,
          acc,
          h0,
          k,
          kOffset,
          v,
          vOffset,
          stride,
          n,
          s,
          bmax,
        );
      }
    },

    finish(out, outRow) {
      if (out.length < (outRow + nQ) * qStride)
        throw new RangeError(`out has too few rows for ${nQ} queries at row ${outRow}`);
      const oBase = outRow * qStride;
      for (let idx = 0; idx < nQ * nHeads; idx++) {
        const sum = l[idx]!;
        if (!(sum > 0))
          throw new RangeError(
            `query ${Math.floor(idx / nHeads)} (position ${start + Math.floor(idx / nHeads)}) saw no positions`,
          );
        const inv = 1 / sum;
        const aOff = idx * headDim;
        for (let d = 0; d < headDim; d++) out[oBase + aOff + d] = acc[aOff + d]! * inv;
      }
    },
  };
}

/**
 * The JS kernel over caches in a heap (views of its memory), on the calling
 * thread only: what measures the JS kernel as the memory-node's profile
 * measures a kernel (the memory-node itself keeps a JS kernel's cache in
 * plain arrays: {@link AttentionKernel.readsHeap} is false).
 */
function jsHeapAttention(heap: WasmHeap): AttentionWorkers {
  const scratch = createAttentionScratch();
  return {
    heap,
    threads: 1,
    prepare: checkAttentionDims,
    attend(dims, items, out) {
      const f = heap.f32();
      for (const it of items) {
        const k = f.subarray(it.kPtr / 4);
        const v = f.subarray(it.vPtr / 4);
        jsAttendKvCache(dims, it.queries, k, v, out, it.outRow, scratch);
      }
    },
    close: async () => {},
  };
}

/** The JS kernel: scalar f64 accumulation; never reads a heap in place. */
export const jsKernel: AttentionKernel = Object.freeze({
  name: "js",
  summary: "scalar JavaScript, f64 accumulation (the reference; slower)",
  readsHeap: () => false,
  attendKvCache: jsAttendKvCache,
  createHeapAttention: (heap: WasmHeap) => jsHeapAttention(heap),
  createOnlineAttention: (dims: AttentionDims) => createJsOnlineAttention(dims),
});
