/**
 * Online attention, and attention over a contiguous cache, by kernel name:
 * the entry points for callers that name a kernel (the bench, tests) rather
 * than hold one ({@link AttentionKernel}, kernels/registry.ts).
 */
import {
  attentionKernel,
  DEFAULT_ATTENTION_KERNEL,
  type AttentionKernel,
  type AttentionScratch,
} from "./kernels/registry.js";
import { createAttentionScratch } from "./kernels/js.js";
import type { AttentionDims, CausalQueries } from "./dims.js";
import type { WasmHeap } from "./wasm-attention.js";

/**
 * Causal attention of consecutive queries of one sequence over K/V rows held
 * in contiguous buffers (the memory-node's plain cache): position t's K row
 * is row t of `k` ([>= startPos + nQueries, n_kv_heads, head_dim] f32),
 * likewise `v`. Writes `nQueries` output rows ([n_heads * head_dim] f32) at
 * row `outRow` of `out`, with the kernel registered as `kernel` (the
 * default "wasm" runs WebAssembly SIMD, K/V copied into wasm memory a block
 * at a time, within ~1e-6 of "js", the scalar f64 kernel; see
 * kernels/wasm.ts and kernels/js.ts).
 * @throws RangeError when the dims are bad, the buffers too short for the
 *   positions asked, or no kernel has that name.
 */
export function attendKvCache(
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
  scratch: AttentionScratch = createAttentionScratch(),
  kernel: string = DEFAULT_ATTENTION_KERNEL,
): void {
  attentionKernel(kernel).attendKvCache(dims, queries, k, v, out, outRow, scratch);
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
  /**
   * Name of a registered kernel (kernels/registry.ts). @default
   * {@link DEFAULT_ATTENTION_KERNEL} ("wasm", which falls back to "js" where it cannot run)
   */
  kernel?: string;
  /**
   * The wasm heap whose memory K/V views may live in (e.g. the
   * storage-node's read buffer); the kernel's state is allocated there too.
   * @default a state of its own (freed when the object is garbage) in the
   *   process-wide heap of {@link attendKvCache}; K/V are copied in
   */
  heap?: WasmHeap;
}

/**
 * Creates an {@link OnlineAttention} for `dims` with the kernel named by
 * `options.kernel`; reuse it across requests. Each object has state of its
 * own: two may be in flight at once.
 * @throws RangeError when the dims are bad or no kernel has that name.
 */
export function createOnlineAttention(dims: AttentionDims, options: OnlineAttentionOptions = {}): OnlineAttention {
  return attentionKernel(options.kernel ?? DEFAULT_ATTENTION_KERNEL).createOnlineAttention(dims, options.heap);
}
