/**
 * The WebAssembly SIMD attention kernel ("wasm", the default): the blocked
 * online-softmax fold of attention-wasm.ts (scores, exp and V sums in f32
 * within a 128-position block, f64 across blocks: within ~1e-6 of the JS
 * kernel), reading K/V in place where they live in a {@link WasmHeap} and
 * copying them in a block at a time where they do not; on several threads
 * through attention-threads.ts. Where WebAssembly SIMD is missing or
 * head_dim is not a multiple of 4 it runs the JS kernel (js.ts).
 */
import { createAttentionWorkers } from "../attention-threads.js";
import { ATTENTION_QUERY_CHUNK, checkKvRows, createWasmAttention, type WasmAttention } from "../attention-wasm.js";
import {
  attentionDimsKey,
  checkAttentionDims,
  checkKvCacheCall,
  type AttentionDims,
  type CausalQueries,
} from "../dims.js";
import { createWasmHeap, type WasmHeap } from "../wasm-attention.js";
import { jsKernel } from "./js.js";
import type { AttentionKernel, AttentionScratch, OnlineAttention } from "./registry.js";

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
 * {@link AttentionKernel.attendKvCache} of the wasm kernel: the K/V rows
 * copied into the process-wide heap a block at a time, folded for every
 * query of a chunk (chunks of ATTENTION_QUERY_CHUNK queries bound the
 * state); the JS kernel where the wasm one cannot run. A cache that already
 * lives in wasm memory (the memory-node's) skips the copies:
 * {@link attendKvCacheInHeap}.
 * @throws RangeError when the dims are bad or the buffers too short.
 */
function wasmAttendKvCache(
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
  scratch: AttentionScratch,
): void {
  checkKvCacheCall(dims, queries, k, v, out, outRow);
  const wasm = defaultWasmAttention(dims);
  if (!wasm) return jsKernel.attendKvCache(dims, queries, k, v, out, outRow, scratch);
  const { q, qRow, nQueries, startPos } = queries;
  const kvRow = dims.nKvHeads * dims.headDim;
  for (let j = 0; j < nQueries; j += ATTENTION_QUERY_CHUNK) {
    const n = Math.min(ATTENTION_QUERY_CHUNK, nQueries - j);
    wasm.begin({ q, qRow: qRow + j, nQueries: n, startPos: startPos + j });
    wasm.foldCopy(0, startPos + j + n, k, 0, v, 0, kvRow);
    wasm.finish(out, outRow + j);
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

/**
 * {@link AttentionKernel.createOnlineAttention} of the wasm kernel: its
 * state in `heap` (K/V views of it read in place, others copied), or, with
 * no heap, a state of its own (freed when the object is garbage) in the
 * process-wide heap, K/V copied in; the JS kernel's where WebAssembly SIMD
 * is missing or head_dim is not a multiple of 4.
 * @throws RangeError when the dims are bad.
 */
function createWasmOnlineAttention(dims: AttentionDims, heap?: WasmHeap): OnlineAttention {
  checkAttentionDims(dims);
  if (dims.headDim % 4 === 0) {
    if (heap) return wasmOnlineAttention(createWasmAttention(heap, dims));
    const shared = sharedHeap();
    if (shared) {
      const wasm = createWasmAttention(shared, dims);
      const online = wasmOnlineAttention(wasm);
      onlineStates.register(online, wasm);
      return online;
    }
  }
  return jsKernel.createOnlineAttention(dims);
}

/** The WebAssembly SIMD kernel: reads K/V of head_dim % 4 == 0 in place from a heap. */
export const wasmKernel: AttentionKernel = Object.freeze({
  name: "wasm",
  summary: "WebAssembly SIMD, f32 within a block, f64 across blocks, threads over a shared heap (default)",
  readsHeap: (dims?: AttentionDims) => dims === undefined || dims.headDim % 4 === 0,
  attendKvCache: wasmAttendKvCache,
  createHeapAttention: createAttentionWorkers,
  createOnlineAttention: createWasmOnlineAttention,
});
