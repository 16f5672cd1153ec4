/**
 * Causal GQA attention kernels shared by the memory-node (KV cache in RAM)
 * and the storage-node (KV cache streamed from disk in blocks), and the
 * validation of an `AttendRequest` against the sequences a node holds.
 *
 * Conventions (the wire's, see proto/tessera/v1/attention.proto):
 * - a query row is [n_heads, head_dim] f32, a K or V row is
 *   [n_kv_heads, head_dim] f32, an output row is [n_heads * head_dim] f32;
 * - query head h reads KV head floor(h / (n_heads / n_kv_heads)) (GQA;
 *   Ainslie et al. 2023), scores are scaled by 1 / sqrt(head_dim);
 * - the queries of one call are consecutive positions startPos,
 *   startPos + 1, ...; the query at position p attends over positions
 *   [0, p], its own K/V included (causal prefill and decode alike).
 *
 * The JS kernels keep scores, softmax sums and output accumulators in f64
 * (JS numbers and Float64Array scratch) while K/V stay f32, so they agree
 * with a plain f64 reference to ~1e-12 whatever the block size. The
 * default WebAssembly SIMD kernels (attention-wasm.ts) compute a block's
 * products and weights in f32 and sum across blocks in f64, agreeing to
 * ~1e-6 (relative to max(1, |value|)).
 */
import {
  Code,
  DType,
  RpcError,
  type AttendRequest,
  type AttendResponseSchema,
  type MessageInitShape,
  type TensorSchema,
} from "@tessera/proto";
import { TesseraError } from "./errors.js";
import { kvBytesPerPosition } from "./model-shape.js";
import { QK_MAX_ABS, checkFiniteValues, tensorF32, tensorWireDtype, wireTensor } from "./tensor.js";
import { ATTENTION_QUERY_CHUNK, checkKvRows, createWasmAttention, type WasmAttention } from "./attention-wasm.js";
import { createWasmHeap, type WasmHeap } from "./wasm-attention.js";

/** Head counts and width of an attention layer. */
export interface AttentionDims {
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
}

/** A map key of a layer shape: "n_heads/n_kv_heads/head_dim", e.g. "32/8/128". */
export function attentionDimsKey(dims: AttentionDims): string {
  return `${dims.nHeads}/${dims.nKvHeads}/${dims.headDim}`;
}

/** KV layout of one sequence (the wire's `KvLayout`). */
export interface KvLayoutDims extends AttentionDims {
  readonly nLayers: number;
}

/**
 * Queries of one sequence at consecutive positions: rows `qRow ..
 * qRow + nQueries - 1` of `q` ([rows, n_heads, head_dim] f32), the first
 * at position `startPos`.
 */
export interface CausalQueries {
  readonly q: Float32Array;
  readonly qRow: number;
  readonly nQueries: number;
  readonly startPos: number;
}

/** Reusable scratch of {@link attendKvCache}, so decode steps do not allocate. */
export interface AttentionScratch {
  /** [block positions, n_heads] scores, then softmax weights, of one block. */
  scores: Float64Array;
  /** [n_heads, head_dim] query (all heads; the name is historical), pre-scaled by 1/sqrt(head_dim). */
  qGroup: Float64Array;
  /** [n_heads, head_dim] output accumulator. */
  acc: Float64Array;
}

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

let defaultHeap: WasmHeap | null | undefined;
/** States of {@link attendKvCache} only (it is synchronous: begin, fold, finish in one call). */
const defaultStates = new Map<string, WasmAttention>();

/** The process-wide heap for K/V that do not live in a heap (created on first use), or undefined without WebAssembly SIMD. */
function sharedHeap(): WasmHeap | undefined {
  if (defaultHeap === undefined) defaultHeap = createWasmHeap() ?? null;
  return defaultHeap ?? undefined;
}

/**
 * {@link attendKvCache}'s wasm attention state of `dims` in the
 * process-wide heap; its K/V rows are copied into it a block at a time.
 * Undefined where WebAssembly SIMD is missing or head_dim is not a multiple
 * of 4. Shared by every call with these dims, which is safe only because a
 * call uses it from begin to finish synchronously.
 */
function defaultWasmAttention(dims: AttentionDims): WasmAttention | undefined {
  if (dims.headDim % 4 !== 0) return undefined;
  const heap = sharedHeap();
  if (!heap) return undefined;
  const key = attentionDimsKey(dims);
  let st = defaultStates.get(key);
  if (!st) defaultStates.set(key, (st = createWasmAttention(heap, dims)));
  return st;
}

/** Frees the heap state of an {@link OnlineAttention} made without a heap once it is garbage. */
const onlineStates = new FinalizationRegistry<WasmAttention>((st) => st.dispose());

/**
 * Which implementation {@link attendKvCache} and {@link createOnlineAttention}
 * run: `"wasm"` the WebAssembly SIMD kernels (attention-wasm.ts; falling
 * back to JS where WebAssembly SIMD is missing or head_dim is not a multiple
 * of 4), `"js"` the scalar f64 kernel.
 */
export type AttentionKernel = "wasm" | "js";

/**
 * Checks that head counts are positive integers and n_heads is a multiple of
 * n_kv_heads.
 * @throws RangeError naming the bad field.
 */
export function checkAttentionDims(d: AttentionDims): void {
  for (const [name, v] of [
    ["nHeads", d.nHeads],
    ["nKvHeads", d.nKvHeads],
    ["headDim", d.headDim],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  if (d.nHeads % d.nKvHeads !== 0) {
    throw new RangeError(`nHeads ${d.nHeads} is not a multiple of nKvHeads ${d.nKvHeads}`);
  }
}

/**
 * Causal attention of consecutive queries of one sequence over K/V rows held
 * in contiguous buffers (the memory-node's cache): position t's K row is row
 * t of `k` ([>= startPos + nQueries, n_kv_heads, head_dim] f32), likewise
 * `v`. Writes `nQueries` output rows ([n_heads * head_dim] f32) at row
 * `outRow` of `out`.
 *
 * The decode hot path (1 query over a long cache). Per query, positions go
 * in blocks of 128 with an online softmax (the same `foldQuery` as
 * {@link createOnlineAttention}), not llama2.c's two passes over the whole
 * cache: a block's scores ([128, n_heads] f64) stay in L1 instead of a
 * [positions, group] array streaming through L2, each K and V row is read
 * once, front to back, for all heads, and up to four heads of a GQA group
 * share each element load. Plain scalar JS: about 1.6x the two-pass kernel
 * but still compute-bound at ~3% of memory bandwidth (bench/attention.ts).
 * With `kernel` "wasm" (the default) the same blocked fold runs entirely in
 * WebAssembly SIMD (attention-wasm.ts: scores, exp, V sums in f32 within a
 * block, f64 across blocks: within ~1e-6 of the JS kernel), the K/V rows
 * copied into wasm memory a block at a time. A cache that already lives in
 * wasm memory (the memory-node's) skips the copies: {@link attendKvCacheInHeap}.
 * @throws RangeError when the dims are bad or the buffers too short for the
 *   positions asked.
 */
export function attendKvCache(
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
  scratch: AttentionScratch = createAttentionScratch(),
  kernel: AttentionKernel = "wasm",
): void {
  checkAttentionDims(dims);
  const { nHeads, nKvHeads, headDim } = dims;
  const { q, qRow, nQueries, startPos } = queries;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const end = startPos + nQueries;
  if (k.length < end * kvRow || v.length < end * kvRow) {
    throw new RangeError(`K/V buffers hold ${Math.floor(Math.min(k.length, v.length) / kvRow)} positions, need ${end}`);
  }
  if (q.length < (qRow + nQueries) * qStride)
    throw new RangeError(`q has too few rows for ${nQueries} queries at row ${qRow}`);
  if (out.length < (outRow + nQueries) * qStride)
    throw new RangeError(`out has too few rows for ${nQueries} queries at row ${outRow}`);
  const wasm = kernel === "js" ? undefined : defaultWasmAttention(dims);
  if (wasm) {
    // Blocks of K/V copied into the default heap, folded for every query of
    // a chunk (chunks of ATTENTION_QUERY_CHUNK queries bound the state).
    for (let j = 0; j < nQueries; j += ATTENTION_QUERY_CHUNK) {
      const n = Math.min(ATTENTION_QUERY_CHUNK, nQueries - j);
      wasm.begin({ q, qRow: qRow + j, nQueries: n, startPos: startPos + j });
      wasm.foldCopy(0, startPos + j + n, k, 0, v, 0, kvRow);
      wasm.finish(out, outRow + j);
    }
    return;
  }
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
 * {@link attendKvCache} for a cache that lives in a wasm heap (the
 * memory-node's): position t's K row ([n_kv_heads, head_dim] f32) at byte
 * kPtr + t * n_kv_heads * head_dim * 4 of `wasm.heap`, V likewise at vPtr.
 * No copy: the WebAssembly SIMD kernels read the rows where they are, each
 * block once for all queries of a chunk (a prefill goes in chunks of
 * {@link ATTENTION_QUERY_CHUNK} queries, so `wasm`'s state stays bounded).
 * @throws RangeError when the heap cannot hold the queries' state.
 */
export function attendKvCacheInHeap(
  wasm: WasmAttention,
  queries: CausalQueries,
  kPtr: number,
  vPtr: number,
  out: Float32Array,
  outRow: number,
): void {
  const { nKvHeads, headDim } = wasm.dims;
  const { q, qRow, nQueries, startPos } = queries;
  for (let j = 0; j < nQueries; j += ATTENTION_QUERY_CHUNK) {
    const n = Math.min(ATTENTION_QUERY_CHUNK, nQueries - j);
    wasm.begin({ q, qRow: qRow + j, nQueries: n, startPos: startPos + j });
    wasm.foldInHeap(0, startPos + j + n, kPtr, vPtr, 4 * nKvHeads * headDim);
    wasm.finish(out, outRow + j);
  }
}

/**
 * Blocked causal attention with an online softmax, for a cache that is
 * never whole in memory (the storage-node): `begin` takes the queries,
 * `fold` consumes K/V of any range of positions in any order, `finish`
 * writes the outputs. Per query head it keeps a running max m, a running sum
 * l of exp(s - m) and an output accumulator rescaled by exp(m_old - m_new)
 * whenever a block raises the max: the "online normalizer calculation for
 * softmax" (Milakov & Gimelshein 2018) as FlashAttention (Dao et al. 2022)
 * applies it per block, so rescaling costs once per block, not per position.
 * State is O(queries x n_heads x head_dim) f64; K/V are only read.
 */
export interface OnlineAttention {
  /**
   * Makes room for the state of `nQueries` queries now, so that `begin`
   * allocates nothing. The wasm kernel's state lives in its heap, and
   * growing the heap's (shared) memory does not detach views of it: they
   * stay valid but do not see the new pages, and their `buffer` is no
   * longer the heap's current one. `fold` still reads them in place
   * (WasmHeap.ownsBuffer knows the memory's earlier buffers).
   */
  reserve(nQueries: number): void;
  /** Resets the state for `queries` (a view is kept; do not change q until finish). */
  begin(queries: CausalQueries): void;
  /**
   * Folds positions [firstPos, firstPos + nPositions). Position firstPos + t
   * has its K row ([n_kv_heads, head_dim] f32) at element kOffset + t x
   * stride of `k`, its V row at vOffset + t x stride of `v`. The default
   * stride, n_kv_heads x head_dim, reads rows packed one after another
   * (a [positions, n_kv_heads, head_dim] tensor); 2 x that reads K and V
   * interleaved by position, as the storage-node's files hold them.
   * Positions after a query's own are masked out for it. With the wasm
   * kernel, rows that are views of its heap are read in place; others are
   * copied in a block at a time.
   * @throws RangeError when the rows asked lie outside `k` or `v`.
   */
  fold(
    firstPos: number,
    nPositions: number,
    k: Float32Array,
    kOffset: number,
    v: Float32Array,
    vOffset: number,
    stride?: number,
  ): void;
  /**
   * Writes the outputs ([nQueries, n_heads * head_dim] f32) at row `outRow`.
   * @throws RangeError when some query saw none of its positions [0, p]
   *   (a caller's bug: its own position must always be folded).
   */
  finish(out: Float32Array, outRow: number): void;
}

/** Options of {@link createOnlineAttention}. */
export interface OnlineAttentionOptions {
  /** @default "wasm" (falls back to "js" where the wasm kernel cannot run) */
  kernel?: AttentionKernel;
  /**
   * The wasm heap whose memory K/V views may live in (e.g. the
   * storage-node's read buffer); the kernel's state is allocated there too.
   * @default a state of its own (freed when the object is garbage) in the
   *   process-wide heap of {@link attendKvCache}; K/V are copied in
   */
  heap?: WasmHeap;
}

/**
 * Creates an {@link OnlineAttention} for `dims`; reuse it across requests.
 * Each object has state of its own: two may be in flight at once.
 * @throws RangeError when the dims are bad.
 */
export function createOnlineAttention(dims: AttentionDims, options: OnlineAttentionOptions = {}): OnlineAttention {
  checkAttentionDims(dims);
  if (options.kernel !== "js" && dims.headDim % 4 === 0) {
    if (options.heap) return wasmOnlineAttention(createWasmAttention(options.heap, dims));
    const heap = sharedHeap();
    if (heap) {
      const wasm = createWasmAttention(heap, dims);
      const online = wasmOnlineAttention(wasm);
      onlineStates.register(online, wasm);
      return online;
    }
  }
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

/** {@link OnlineAttention} on a {@link WasmAttention}: heap views in place, other rows copied. */
function wasmOnlineAttention(wasm: WasmAttention): OnlineAttention {
  const kvRowLen = wasm.dims.nKvHeads * wasm.dims.headDim;
  const heap = wasm.heap;
  return {
    reserve: (n) => wasm.reserve(n),
    begin: (queries) => wasm.begin(queries),
    fold(firstPos, nPositions, k, kOffset, v, vOffset, stride = kvRowLen) {
      if (nPositions <= 0) return;
      checkKvRows("k", k, kOffset, nPositions, stride, kvRowLen);
      checkKvRows("v", v, vOffset, nPositions, stride, kvRowLen);
      // Views of the heap's memory, including ones taken before it grew, are read in place.
      if (heap.ownsBuffer(k.buffer) && heap.ownsBuffer(v.buffer)) {
        const kPtr = k.byteOffset + 4 * kOffset;
        const vPtr = v.byteOffset + 4 * vOffset;
        wasm.foldInHeap(firstPos, nPositions, kPtr, vPtr, 4 * stride);
      } else {
        wasm.foldCopy(firstPos, nPositions, k, kOffset, v, vOffset, stride);
      }
    },
    finish: (out, outRow) => wasm.finish(out, outRow),
  };
}

// ---------------------------------------------------------------------------
// Attend requests: the validation both attention nodes share.

/**
 * An `AttendRequest` (or one of its items) is malformed or does not fit the
 * sequence it names. `rpcCode` is NOT_FOUND for an unknown sequence,
 * OUT_OF_RANGE for bad positions, INVALID_ARGUMENT for bad shapes. Nodes
 * report it in `AttendResponse.error`, so the stream survives.
 */
export class AttentionRequestError extends TesseraError {
  override name = "AttentionRequestError";
  constructor(code: number, message: string) {
    super(message);
    this.rpcCode = code;
  }
}

/** A sequence as the Attend validation sees it. */
export interface AttendTarget {
  readonly layout: KvLayoutDims;
  readonly maxPositions: number;
  /** Positions written so far for `layer`. */
  layerLength(layer: number): number;
}

/** One validated item: its sequence and its rows in q, k, v and o. */
export interface AttendPlanItem<S> {
  readonly seqId: string;
  readonly seq: S;
  readonly startPos: number;
  readonly nTokens: number;
  /** First row of this item in q, k, v and the output. */
  readonly row: number;
}

/**
 * A validated request: its tensors as f32 (views of f32 wire bytes, or
 * decoded from f16) and its items.
 */
export interface AttendPlan<S> {
  readonly layer: number;
  readonly dims: AttentionDims;
  readonly totalTokens: number;
  /** [total_tokens, n_heads, head_dim] */
  readonly q: Float32Array;
  /** [total_tokens, n_kv_heads, head_dim] */
  readonly k: Float32Array;
  /** [total_tokens, n_kv_heads, head_dim] */
  readonly v: Float32Array;
  readonly items: readonly AttendPlanItem<S>[];
}

/**
 * Answers one AttendRequest of a memory- or storage-node: runs `compute`
 * (which appends and attends, returning o [total_tokens, n_heads * head_dim]
 * f32 as a wire tensor) and times it. When `compute` is synchronous and q is
 * f16, its `o` is encoded before this returns (no await in between), so it
 * may view a buffer the node reuses. `o` goes back in the dtype of the
 * request's q: an f32 `o` is encoded to f16 in one pass when q was f16, so
 * a gpu-node that sends f16 activations gets f16 back. Anything `compute`
 * throws becomes the response's `error` (code from `RpcError.from`, the
 * node's role and address), so one bad request never ends the Attend stream.
 */
export async function answerAttend(
  req: AttendRequest,
  node: { role: string; address: string },
  compute: () => MessageInitShape<typeof TensorSchema> | Promise<MessageInitShape<typeof TensorSchema>>,
): Promise<MessageInitShape<typeof AttendResponseSchema>> {
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  try {
    // A synchronous compute's output is encoded below in the same tick, so
    // (for an f16 request) it may be a view of a buffer the node reuses for
    // its next request: only the fresh f16 bytes outlive this call.
    const r = compute();
    let o = r instanceof Promise ? await r : r;
    // f16: one encoding pass from the node's f32 output into fresh wire
    // bytes. Having compute write f16 directly would not save a pass or an
    // allocation: the kernels accumulate in f32/f64 and need an f32 output
    // to write to, and the f16 bytes must be allocated either way.
    if (tensorWireDtype(req.q) === "f16" && o.dtype === DType.DTYPE_F32 && o.data) {
      const b = o.data;
      const n = b.byteLength / 4;
      const f =
        b.byteOffset % 4 === 0
          ? new Float32Array(b.buffer, b.byteOffset, n)
          : new Float32Array(new Uint8Array(b).buffer);
      o = wireTensor(f, o.shape ?? [n], "f16");
    }
    return { stepId: req.stepId, layer: req.layer, o, computeSeconds: seconds() };
  } catch (err) {
    const e = RpcError.from(err);
    const error = { code: e.code, message: e.message, role: node.role, address: node.address };
    return { stepId: req.stepId, layer: req.layer, error, computeSeconds: seconds() };
  }
}

/**
 * Validates `req` before anything is written, so a bad request has no
 * effect: every item names a known sequence (once), `layer` exists in its
 * layout, the tensors are f32 or f16 (each on its own; f16 is decoded to
 * fresh f32 arrays or `scratch`) of the shapes the proto gives and match each
 * sequence's layout, n_tokens >= 1, start_pos <= the layer's current length
 * (equal appends; less overwrites, which makes a retried step idempotent)
 * and start_pos + n_tokens <= max_positions. Last, q and k must hold no
 * value that would make the attention scores NaN or overflow (NaN, ±inf,
 * beyond {@link QK_MAX_ABS}): the kernels would fail with INTERNAL, but such
 * values are the client's bad input.
 * @param lookup finds a sequence by id, undefined when unknown; it may throw
 *   its own error (e.g. a sequence whose files are damaged).
 * @param where names the node in messages, e.g. `memory-node 127.0.0.1:7001`.
 * @param scratch where f16 q, k and v ([n] f32 each, at least n long) are
 *   decoded instead of fresh arrays: a node that consumes them before its
 *   next request reuses them (less garbage per layer: see memory-node.ts).
 * @throws AttentionRequestError (see its codes), or what `lookup` throws.
 */
export function planAttendRequest<S extends AttendTarget>(
  req: AttendRequest,
  lookup: (seqId: string) => S | undefined,
  where: string,
  scratch?: (what: "q" | "k" | "v", n: number) => Float32Array,
): AttendPlan<S> {
  const bad = (code: number, msg: string) => new AttentionRequestError(code, `${where}: layer ${req.layer}: ${msg}`);
  const shapeOf = (t: AttendRequest["q"]) => (t ? `[${t.shape.join(", ")}]` : "missing");
  const q3 = req.q?.shape;
  const k3 = req.k?.shape;
  const v3 = req.v?.shape;
  if (!q3 || !k3 || !v3 || q3.length !== 3 || k3.length !== 3 || v3.length !== 3) {
    throw bad(
      Code.INVALID_ARGUMENT,
      `q, k and v must be rank-3 tensors, got q ${shapeOf(req.q)}, k ${shapeOf(req.k)}, v ${shapeOf(req.v)}`,
    );
  }
  const [tq, nHeads, headDim] = q3 as [number, number, number];
  const [tk, nKvHeads, kDim] = k3 as [number, number, number];
  if (tk !== tq || kDim !== headDim || v3[0] !== tk || v3[1] !== nKvHeads || v3[2] !== kDim) {
    throw bad(
      Code.INVALID_ARGUMENT,
      `shapes do not agree: q ${shapeOf(req.q)} must be [T, n_heads, head_dim], k ${shapeOf(req.k)} and v ${shapeOf(req.v)} [T, n_kv_heads, head_dim]`,
    );
  }
  let q: Float32Array, k: Float32Array, v: Float32Array;
  try {
    const n = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
    q = tensorF32(req.q, "q", scratch?.("q", n(q3)));
    k = tensorF32(req.k, "k", scratch?.("k", n(k3)));
    v = tensorF32(req.v, "v", scratch?.("v", n(v3)));
  } catch (err) {
    throw bad(Code.INVALID_ARGUMENT, (err as Error).message);
  }
  const items: AttendPlanItem<S>[] = [];
  const seen = new Set<string>();
  let row = 0;
  for (const it of req.items) {
    const id = it.seqId;
    if (seen.has(id)) throw bad(Code.INVALID_ARGUMENT, `sequence "${id}" appears twice in one request`);
    seen.add(id);
    const seq = lookup(id);
    if (!seq) throw bad(Code.NOT_FOUND, `unknown sequence "${id}" (not opened, or closed)`);
    const L = seq.layout;
    if (L.nHeads !== nHeads || L.nKvHeads !== nKvHeads || L.headDim !== headDim) {
      throw bad(
        Code.INVALID_ARGUMENT,
        `sequence "${id}" has n_heads ${L.nHeads}, n_kv_heads ${L.nKvHeads}, head_dim ${L.headDim}; q is ${shapeOf(req.q)}, k ${shapeOf(req.k)}`,
      );
    }
    if (req.layer >= L.nLayers) throw bad(Code.INVALID_ARGUMENT, `sequence "${id}" has ${L.nLayers} layers`);
    if (it.nTokens < 1) throw bad(Code.INVALID_ARGUMENT, `sequence "${id}": n_tokens must be >= 1`);
    const len = seq.layerLength(req.layer);
    if (it.startPos > len) {
      throw bad(
        Code.OUT_OF_RANGE,
        `sequence "${id}": start_pos ${it.startPos} leaves a gap after its ${len} stored positions`,
      );
    }
    if (it.startPos + it.nTokens > seq.maxPositions) {
      throw bad(
        Code.OUT_OF_RANGE,
        `sequence "${id}": positions [${it.startPos}, ${it.startPos + it.nTokens}) exceed its max_positions ${seq.maxPositions}`,
      );
    }
    items.push({ seqId: id, seq, startPos: it.startPos, nTokens: it.nTokens, row });
    row += it.nTokens;
  }
  if (row !== tq) throw bad(Code.INVALID_ARGUMENT, `items have ${row} tokens in all, tensors have ${tq} rows`);
  try {
    checkFiniteValues(q, "q", QK_MAX_ABS);
    checkFiniteValues(k, "k", QK_MAX_ABS);
  } catch (err) {
    throw bad(Code.INVALID_ARGUMENT, (err as Error).message);
  }
  return { layer: req.layer, dims: { nHeads, nKvHeads, headDim }, totalTokens: tq, q, k, v, items };
}

/**
 * Validates a wire `KvLayout` and `max_positions` for OpenSequence and
 * returns the bytes of KV cache the sequence needs: max_positions x n_layers
 * x 2 (K, V) x n_kv_heads x head_dim x 4 (f32).
 * @throws AttentionRequestError INVALID_ARGUMENT naming the bad field.
 */
export function kvSequenceBytes(layout: KvLayoutDims | undefined, maxPositions: number, where: string): number {
  if (!layout) throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: layout is missing`);
  if (!Number.isInteger(layout.nLayers) || layout.nLayers < 1) {
    throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: n_layers must be >= 1, got ${layout.nLayers}`);
  }
  try {
    checkAttentionDims(layout);
  } catch (err) {
    throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: ${(err as Error).message}`);
  }
  if (!Number.isInteger(maxPositions) || maxPositions < 1) {
    throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: max_positions must be >= 1, got ${maxPositions}`);
  }
  return maxPositions * kvBytesPerPosition(layout);
}

/** True when two layouts are the same. */
export function sameKvLayout(a: KvLayoutDims, b: KvLayoutDims): boolean {
  return a.nLayers === b.nLayers && a.nHeads === b.nHeads && a.nKvHeads === b.nKvHeads && a.headDim === b.headDim;
}

/** A layout as messages show it: "2 layers, 4 heads, 2 kv heads, head_dim 8". */
export function describeKvLayout(l: KvLayoutDims): string {
  return `${l.nLayers} layers, ${l.nHeads} heads, ${l.nKvHeads} kv heads, head_dim ${l.headDim}`;
}

/**
 * Validates an OpenSequence request on an attention node: the seq_id, the
 * layout and max_positions ({@link kvSequenceBytes}), and, when the node
 * already holds the sequence (`existing`), that re-opening it is
 * idempotent: the same layout and no larger max_positions (its reservation
 * was sized by the first request and does not grow). `where` names the node
 * ("memory-node 127.0.0.1:5"); `held` is how the node holds a sequence, as
 * its messages say: "open" (RAM) or "stored" (disk).
 * @returns the layout (validated) and the bytes of KV cache the sequence needs.
 * @throws AttentionRequestError INVALID_ARGUMENT naming the bad field, or saying how `existing` differs.
 */
export function checkOpenSequence(
  seqId: string,
  layout: KvLayoutDims | undefined,
  maxPositions: number,
  existing: Pick<AttendTarget, "layout" | "maxPositions"> | undefined,
  where: string,
  held: "open" | "stored",
): { layout: KvLayoutDims; bytes: number } {
  if (seqId.length === 0) throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: seq_id is empty`);
  const seq = `${where}: sequence "${seqId}"`;
  const bytes = kvSequenceBytes(layout, maxPositions, seq);
  const lay = layout!;
  if (existing && !sameKvLayout(existing.layout, lay)) {
    throw new AttentionRequestError(
      Code.INVALID_ARGUMENT,
      `${seq} is ${held} with layout (${describeKvLayout(existing.layout)}), not (${describeKvLayout(lay)})`,
    );
  }
  if (existing && maxPositions > existing.maxPositions) {
    throw new AttentionRequestError(
      Code.INVALID_ARGUMENT,
      `${seq} is ${held} with max_positions ${existing.maxPositions}; cannot grow to ${maxPositions}`,
    );
  }
  return { layout: lay, bytes };
}
