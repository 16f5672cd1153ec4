/**
 * Decode attention roofline of this machine (issue 4, item 1): KV bytes/s
 * and FLOP/s of the memory-node's attention kernel.
 */
import { availableParallelism } from "node:os";
import {
  attentionKernel,
  createWasmHeap,
  DEFAULT_ATTENTION_KERNEL,
  type AttentionDims,
  type AttentionKernel,
} from "@tessera/attention";
import type { AttentionKernelRate } from "@tessera/scheduler";
import { bestOf } from "./measure.js";

/** One kernel run of {@link measureAttentionKernel}: rates at one layer shape. */
interface KernelRun {
  bytesAll: number;
  bytesOne: number;
  /** FLOPs per KV byte of this shape: 4·n_heads·head_dim / (2·n_kv_heads·head_dim·4). */
  intensity: number;
  itemS: number;
}

/** Rates of decode attention at `dims` (see {@link measureAttentionKernel}). */
async function kernelRun(
  dims: AttentionDims,
  sequences: number,
  positions: number,
  threads: number,
  reps: number,
  kernel: AttentionKernel,
): Promise<KernelRun> {
  const heap = createWasmHeap();
  if (!heap) throw new Error("measureAttentionKernel: WebAssembly SIMD with shared memory is unavailable");
  const kvRow = dims.nKvHeads * dims.headDim;
  const qStride = dims.nHeads * dims.headDim;
  const items: { kPtr: number; vPtr: number; i: number }[] = [];
  for (let i = 0; i < sequences; i++) {
    const kPtr = heap.alloc(4 * positions * kvRow);
    const vPtr = heap.alloc(4 * positions * kvRow);
    if (kPtr === undefined || vPtr === undefined) throw new Error("measureAttentionKernel: wasm heap too small");
    items.push({ kPtr, vPtr, i });
  }
  const f = heap.f32();
  for (const { kPtr, vPtr } of items)
    for (let j = 0; j < positions * kvRow; j++) {
      f[kPtr / 4 + j] = Math.sin(j * 0.37);
      f[vPtr / 4 + j] = Math.cos(j * 0.11);
    }
  const q = new Float32Array(sequences * qStride).map((_, j) => Math.sin(j));
  const out = new Float32Array(sequences * qStride);
  const work = items.map(({ kPtr, vPtr, i }) => ({
    queries: { q, qRow: i, nQueries: 1, startPos: positions - 1 },
    kPtr,
    vPtr,
    outRow: i,
  }));
  // 256 items of 16 positions each, for the fixed cost per item.
  const shortItems = Array.from({ length: 256 }, (_, j) => ({
    queries: { q, qRow: j % sequences, nQueries: 1, startPos: SHORT_POSITIONS - 1 },
    kPtr: items[j % sequences]!.kPtr,
    vPtr: items[j % sequences]!.vPtr,
    outRow: j % sequences,
  }));
  const kvBytes = sequences * positions * kvRow * 4 * 2;
  const time = async (n: number, what: typeof work, r: number) => {
    const pool = kernel.createHeapAttention(heap, n, { log: () => {} });
    try {
      pool.prepare(dims);
      pool.attend(dims, what, out); // warm-up (starts the workers)
      return bestOf(r, () => pool.attend(dims, what, out));
    } finally {
      await pool.close();
    }
  };
  await time(1, work, 1); // tier-up of the wasm kernels (Liftoff, then TurboFan) before anything is timed
  const bytesAll = threads > 1 ? kvBytes / (await time(threads, work, reps)) : 0;
  const bytesOne = kvBytes / (await time(1, work, reps));
  const tShort = await time(1, shortItems, reps + 2);
  return {
    bytesAll: Math.max(bytesAll, bytesOne),
    bytesOne,
    intensity: (4 * dims.nHeads * dims.headDim) / (2 * kvRow * 4),
    itemS: Math.max(0, tShort / shortItems.length - (SHORT_POSITIONS * kvRow * 4 * 2) / bytesOne),
  };
}

/**
 * Roofline of decode attention as the memory-node runs it (`kernel`, by
 * default @tessera/attention's wasm kernel through its attention workers:
 * {@link AttentionKernel.createHeapAttention}; KV f32 in a wasm heap, one query
 * per sequence over `positions` positions of `sequences` sequences), fitted
 * from two layer shapes of different arithmetic intensity: 8 heads over 8
 * KV heads (0.5 FLOP per KV byte) and 32 heads over 8 KV heads (GQA 4: 2
 * FLOP per byte), head_dim 64. KV bytes/s is the better of the two byte
 * rates, FLOP/s the better of the two FLOP rates (FLOPs = 4·n_heads·head_dim
 * per position, q·K and p·V), so max(bytes/B, flops/F) reproduces both
 * samples (Williams et al. 2009). Each rate with `threads` threads (the
 * calling one included) and with one; plus the fixed cost per item from 256
 * items of 16 positions (one thread, GQA-4 shape), less their bytes.
 * Default: 8 × 2048 positions (64 MiB of KV per shape).
 * @throws Error when WebAssembly SIMD or shared memory is unavailable.
 */
export async function measureAttentionKernel(
  sequences = 8,
  positions = 2048,
  threads = availableParallelism(),
  reps = 3,
  kernel: AttentionKernel = attentionKernel(DEFAULT_ATTENTION_KERNEL),
): Promise<AttentionKernelRate> {
  const low = await kernelRun({ nHeads: 8, nKvHeads: 8, headDim: 64 }, sequences, positions, threads, reps, kernel);
  const high = await kernelRun({ nHeads: 32, nKvHeads: 8, headDim: 64 }, sequences, positions, threads, reps, kernel);
  return {
    kvBytesPerS: Math.max(low.bytesAll, high.bytesAll),
    flopsPerS: Math.max(low.bytesAll * low.intensity, high.bytesAll * high.intensity),
    threads,
    kvBytesPerSOneThread: Math.max(low.bytesOne, high.bytesOne),
    flopsPerSOneThread: Math.max(low.bytesOne * low.intensity, high.bytesOne * high.intensity),
    kvElementBytes: 4,
    itemS: high.itemS,
  };
}

/** Positions of the short items {@link measureAttentionKernel} times for the fixed cost per item. */
const SHORT_POSITIONS = 16;
