/**
 * Online attention, and attention over a contiguous cache, by kernel name:
 * the entry points for callers that name a kernel (the bench, tests) rather
 * than hold one ({@link AttentionKernel}, kernels/registry.ts).
 */
import { DEFAULT_ATTENTION_KERNEL } from "./kernels/built-in.js";
import {
  attentionKernel,
  type AttentionKernel,
  type AttentionScratch,
  type OnlineAttention,
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
