/**
 * The attention kernels by name: the interface every kernel implements, and
 * the one table of kernels the nodes' `--attention-kernel` option picks
 * from. A kernel is one file in this folder exporting an
 * {@link AttentionKernel}; adding one is that file plus its import and its
 * entry in {@link BUILT_IN_KERNELS} below (or, from outside the package, one
 * {@link registerAttentionKernel} call).
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
import type { OnlineAttention } from "../online.js";
import type { WasmHeap } from "../wasm-attention.js";
import { jsKernel } from "./js.js";
import { wasmKernel } from "./wasm.js";

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
 * One attention kernel: the three ways the attention nodes call attention.
 * - the memory-node keeps each layer's K and V in one buffer: in a
 *   {@link WasmHeap} when {@link readsHeap} says so (attended by
 *   {@link createHeapAttention}'s threads, in place), else in plain
 *   Float32Arrays (attended by {@link attendKvCache});
 * - the storage-node streams blocks of K/V from disk through a read buffer
 *   (in a heap when {@link readsHeap}() says so) into an online-softmax
 *   accumulator ({@link createOnlineAttention}).
 * Every method is synchronous and allocates only on first use of a shape.
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

/** The kernels this package ships, in the order messages list them. */
const BUILT_IN_KERNELS: readonly AttentionKernel[] = [wasmKernel, jsKernel];

/** The kernel both attention nodes and the by-name entry points (online.ts) use unless told otherwise. */
export const DEFAULT_ATTENTION_KERNEL = wasmKernel.name;

const kernels = new Map<string, AttentionKernel>(BUILT_IN_KERNELS.map((k) => [k.name, k]));

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
