/**
 * The attention kernels by name: the interface every kernel implements
 * ({@link AttentionKernel}, with {@link OnlineAttention}), and the table of
 * kernels the nodes' `--attention-kernel` option picks from. A kernel is one
 * file in this folder exporting an {@link AttentionKernel}; adding one is
 * that file plus one {@link registerAttentionKernel} line (and its import)
 * in built-in.ts, or, from outside the package, one
 * {@link registerAttentionKernel} call.
 *
 * Shapes and dtypes every kernel sees (the wire's; see dims.ts):
 * - queries q: [rows, n_heads, head_dim] f32, a call reads rows
 *   `qRow .. qRow + nQueries - 1`, the first at position `startPos`;
 * - K and V: [positions, n_kv_heads, head_dim] f32 rows (packed, or at a
 *   stride for the storage-node's interleaved K/V), position t at row t;
 * - output o: [rows, n_heads * head_dim] f32, written at row `outRow`;
 * - causal GQA: the query at position p attends over positions [0, p],
 *   query head h reads KV head floor(h / (n_heads / n_kv_heads)), scores
 *   scaled by 1 / sqrt(head_dim).
 * Results agree with a plain f64 reference to ~1e-6 relative to
 * max(1, |value|) (the JS kernel to ~1e-12).
 */
import { ConfigError } from "@tessera/core";
import type { AttentionWorkers, AttentionWorkersOptions } from "../attention-threads.js";
import type { AttentionDims, CausalQueries } from "../dims.js";
import type { WasmHeap } from "../wasm-attention.js";

/** Reusable scratch of {@link AttentionKernel.attendKvCache}, so decode steps do not allocate (the JS kernel's). */
export interface AttentionScratch {
  /** [block positions, n_heads] scores, then softmax weights, of one block. */
  scores: Float64Array;
  /** [n_heads, head_dim] query (all heads; the name is historical), pre-scaled by 1/sqrt(head_dim). */
  qGroup: Float64Array;
  /** [n_heads, head_dim] output accumulator. */
  acc: Float64Array;
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

/**
 * One attention kernel: the three ways the attention nodes call attention.
 * - the memory-node keeps each layer's K and V in one buffer: in a
 *   {@link WasmHeap} when {@link readsHeap} says so (attended by
 *   {@link createHeapAttention}'s threads, in place), else in plain
 *   Float32Arrays (attended by {@link attendKvCache});
 * - the storage-node streams blocks of K/V from disk through a read buffer
 *   (in a heap when {@link readsHeap}() says so) into an online-softmax
 *   accumulator ({@link createOnlineAttention}).
 * Every attention call (attendKvCache, AttentionWorkers.attend, the
 * OnlineAttention methods) is synchronous.
 */
export interface AttentionKernel {
  /** Name it is registered under: the value of `--attention-kernel` / `attentionKernel`. */
  readonly name: string;
  /** One line saying what it is, for usage text. */
  readonly summary: string;
  /**
   * True when this kernel reads K/V of `dims` in place from a
   * {@link WasmHeap} (so a node should allocate them there); `dims` omitted:
   * whether it reads heaps at all (the storage-node's read buffer).
   */
  readsHeap(dims?: AttentionDims): boolean;
  /**
   * Causal attention of `queries` over a contiguous cache: position t's K
   * row is row t of `k` ([>= startPos + nQueries, n_kv_heads, head_dim]
   * f32), likewise `v`; writes nQueries output rows ([n_heads * head_dim]
   * f32) at row `outRow` of `out`.
   * @throws RangeError when the dims are bad or the buffers too short (`checkKvCacheCall`, dims.ts).
   */
  attendKvCache(
    dims: AttentionDims,
    queries: CausalQueries,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    outRow: number,
    scratch: AttentionScratch,
  ): void;
  /**
   * Attention over caches that live in `heap` (see {@link AttentionWorkers}:
   * items of K/V at byte addresses), on up to `threads` threads, the
   * calling one included.
   */
  createHeapAttention(heap: WasmHeap, threads: number, options?: AttentionWorkersOptions): AttentionWorkers;
  /**
   * An online-softmax accumulator for `dims` (see {@link OnlineAttention}),
   * reading K/V views of `heap` in place when given; otherwise K/V are
   * plain arrays.
   * @throws RangeError when the dims are bad.
   */
  createOnlineAttention(dims: AttentionDims, heap?: WasmHeap): OnlineAttention;
}

/** The registered kernels by name, in registration order (the built-in ones first: built-in.ts). */
const kernels = new Map<string, AttentionKernel>();

/**
 * Registers `kernel` under `kernel.name`, so that `--attention-kernel` (and
 * {@link attentionKernel}) can pick it.
 * @throws RangeError when the name is empty or already taken.
 */
export function registerAttentionKernel(kernel: AttentionKernel): void {
  if (typeof kernel.name !== "string" || kernel.name.length === 0)
    throw new RangeError("an attention kernel needs a name");
  if (kernels.has(kernel.name)) throw new RangeError(`attention kernel "${kernel.name}" is already registered`);
  kernels.set(kernel.name, kernel);
}

/** Names of the registered kernels, built-in ones first, in registration order. */
export function attentionKernelNames(): string[] {
  return [...kernels.keys()];
}

/** The known names as messages list them: `"wasm" or "js"`, `"wasm", "js" or "x"`. */
function knownNames(): string {
  const names = attentionKernelNames().map((n) => JSON.stringify(n));
  return names.length < 2 ? names.join("") : `${names.slice(0, -1).join(", ")} or ${names.at(-1)}`;
}

/**
 * The kernel registered as `name`.
 * @throws RangeError naming the known kernels when there is none.
 */
export function attentionKernel(name: string): AttentionKernel {
  const k = kernels.get(name);
  if (!k) throw new RangeError(`unknown attention kernel ${JSON.stringify(name)}: must be ${knownNames()}`);
  return k;
}

/**
 * The `attentionKernel` option of an attention node's options compiler:
 * `value`, or `dflt` when undefined, must name a registered kernel.
 * @returns the kernel's name.
 * @throws ConfigError naming the option "attentionKernel" and the known names.
 */
export function compileAttentionKernelOption(value: unknown, dflt: string): string {
  const name = value ?? dflt;
  if (typeof name !== "string" || !kernels.has(name))
    throw new ConfigError("attentionKernel", `must be ${knownNames()}, got ${JSON.stringify(name)}`);
  return name;
}
