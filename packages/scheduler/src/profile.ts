/**
 * Machine profiles (issue 4, item 1): what a node measures about itself in a
 * few seconds, and the mapping of such a profile to the cost model's node
 * figures ({@link GpuSpec}, {@link AttentionSpec}).
 *
 * The measurements are plain functions so that the bench
 * (bench/plan-vs-measured.ts) and, later, each node's self-profile at start
 * share them:
 * - {@link profileDense}: dense FLOP/s and weight bytes/s of the execution
 *   provider, from timed MatMuls at a few batch sizes (the caller supplies
 *   the timer, e.g. onnxruntime on the gpu-node);
 * - `measureReadBandwidth` of @tessera/core: one thread's memory read bandwidth (memcmp
 *   of two equal buffers, as bench/bandwidth.ts);
 * - {@link measureAttentionKernel}: KV bytes/s and FLOP/s of the
 *   memory-node's decode attention kernel (core's wasm kernel, KV in a wasm
 *   heap, on worker threads and on one), the attention roofline's figures;
 * - {@link measureDiskRead}: sequential read bandwidth of a directory's disk
 *   (fresh file, pages dropped with posix_fadvise via `dd iflag=nocache`) and
 *   of the same file from the page cache;
 * - {@link measureRpcLoopback}: round-trip time and one-way bandwidth of
 *   messages on a gRPC bidirectional stream over loopback to another
 *   process (grpc-js, raw byte messages).
 */
import { spawn } from "node:child_process";
import { open, rm } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { createRequire } from "node:module";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { bestOf, dropFilePages } from "@tessera/core";
import {
  attentionKernel,
  createWasmHeap,
  DEFAULT_ATTENTION_KERNEL,
  type AttentionDims,
  type AttentionKernel,
} from "@tessera/attention";
import type { AttentionSpec, GpuSpec, LinkSpec } from "./cost-model.js";

/** One timed MatMul: x [batch, k] × W [k, n], weights of `weightBytes` per element; seconds per run. */
export interface DenseSample {
  batch: number;
  k: number;
  n: number;
  seconds: number;
}

/** Decode attention kernel roofline: KV bytes/s and FLOP/s while attending (see {@link measureAttentionKernel}). */
export interface AttentionKernelRate {
  /** With `threads` threads (the calling one included), KV bytes/s. */
  kvBytesPerS: number;
  threads: number;
  /** With `threads` threads, attention FLOP/s (4·n_heads·head_dim per position: q·K and p·V). */
  flopsPerS: number;
  /** One thread, KV bytes/s. */
  kvBytesPerSOneThread: number;
  /** One thread, FLOP/s. */
  flopsPerSOneThread: number;
  /** Bytes per KV element the kernel reads (4: f32). */
  kvElementBytes: number;
  /**
   * Fixed seconds per item (one sequence's query in one layer), one thread:
   * time of many 16-position items ÷ items, less their KV bytes at the
   * one-thread rate (clamped at 0).
   */
  itemS: number;
}

/** Sequential read bandwidth of a directory's disk, bytes/s. */
export interface DiskRead {
  /** Fresh file, pages dropped before each read (the disk itself when `dropped`). */
  readBytesPerS: number;
  /** Whether the pages could be dropped; when false `readBytesPerS` is a page-cache figure. */
  dropped: boolean;
  /** The same file read again with its pages in the page cache. */
  cachedReadBytesPerS: number;
  /**
   * Seconds per durable append when many run at once: `files` concurrent
   * (4 KiB positional write + fdatasync) on distinct files, wall time ÷ files.
   */
  syncS: number;
}

/** A gRPC unary round trip over a link. */
export interface RpcLink {
  /** Median round trip of an empty request and reply, seconds. */
  rttS: number;
  /** One-way payload bytes/s of a large request (reply empty), RTT excluded. */
  bytesPerS: number;
}

/** One size of an Attend probe ({@link fitAttendProbe}): medians over its requests. */
export interface AttendProbeSample {
  /** Sequences (AttendItems, one new position each) in every request. */
  items: number;
  /** Client-side round trip of one request, seconds: f16 encoding of q/k/v, send, the node's work, reply, f16 decoding. */
  seconds: number;
  /** The node's own `compute_seconds` for that request (append + attend). */
  computeSeconds: number;
}

/**
 * Real Attend round trips to one attention node (a memory- or storage-node
 * process of the local cluster), as a gpu-node sends them: one request per
 * layer carrying `items` sequences' q/k/v in f16, at a few item counts.
 */
export interface AttendProbe {
  samples: AttendProbeSample[];
  /** Wire bytes of one item, request (q, k, v) + reply (o). */
  itemWireBytes: number;
  /** KV bytes one item's attention reads at the probe's mean context (f32 K and V). */
  itemKvBytes: number;
  /**
   * Requests of items at a long context (at two or more item counts), each
   * item reading `kvBytes` of KV (mean), at least `splitMinBytes`, the size
   * from which a memory-node spreads a request over its worker threads
   * (core's SPLIT_MIN_BYTES). Absent: no split term, and the node's KV
   * bytes/s stay the kernel's.
   */
  long?: { samples: AttendProbeSample[]; kvBytes: number; splitMinBytes: number };
}

/** Linear fit of an {@link AttendProbe}: per-request and per-item costs, seconds. */
export interface AttendCosts {
  /** Node side, fixed per request: intercept of compute_seconds over items. */
  requestComputeS: number;
  /** Node side, per item: slope of compute_seconds over items. */
  itemComputeS: number;
  /** Wire side (round trip − compute_seconds), fixed per request: intercept. */
  requestWireS: number;
  /** Wire side, per item: slope. */
  itemWireS: number;
}

/**
 * Least-squares lines through an {@link AttendProbe}'s samples: compute =
 * requestComputeS + items·itemComputeS, round trip − compute = requestWireS
 * + items·itemWireS. Intercepts and slopes are clamped at 0 (noise on a
 * shared machine can tilt a line below it).
 * @throws RangeError when the probe has fewer than two distinct item counts.
 */
export function fitAttendProbe(probe: AttendProbe): AttendCosts {
  const xs = probe.samples.map((s) => s.items);
  if (new Set(xs).size < 2) throw new RangeError("fitAttendProbe: need samples at two or more item counts");
  const line = (ys: number[]): [number, number] => {
    const n = xs.length;
    const mx = xs.reduce((a, x) => a + x, 0) / n;
    const my = ys.reduce((a, y) => a + y, 0) / n;
    let sxy = 0;
    let sxx = 0;
    for (let i = 0; i < n; i++) {
      sxy += (xs[i]! - mx) * (ys[i]! - my);
      sxx += (xs[i]! - mx) ** 2;
    }
    const slope = sxy / sxx;
    return [my - slope * mx, slope];
  };
  const [rc, ic] = line(probe.samples.map((s) => s.computeSeconds));
  const [rw, iw] = line(probe.samples.map((s) => s.seconds - s.computeSeconds));
  const z = (x: number) => Math.max(0, x);
  return { requestComputeS: z(rc), itemComputeS: z(ic), requestWireS: z(rw), itemWireS: z(iw) };
}

/** Everything a machine measured about itself; input of {@link localNodeSpecs}. */
export interface MachineProfile {
  /** Cores the processes of the machine share (os.availableParallelism). */
  cores: number;
  /** Dense MatMul samples, all cores (onnxruntime's intra-op threads). */
  dense: DenseSample[];
  /** Bytes per weight element of the dense samples (4: f32 weights, onnxruntime CPU EP). */
  denseWeightBytes: number;
  /**
   * Seconds of one layer's graphs (the gpu-node's pre- and post-attention
   * graphs) at batch 1 on a tiny width (dim 64): the fixed cost of a layer
   * per decode step (graph launches, the small ops around the MatMuls).
   */
  denseLayerOverheadS: number;
  /** One thread's memory read bandwidth, bytes/s. */
  memoryReadBytesPerS: number;
  attention: AttentionKernelRate;
  disk: DiskRead;
  rpc: RpcLink;
  /** Physical memory, bytes. */
  memoryBytes: number;
  /**
   * Real Attend round trips to the local cluster's memory- and
   * storage-node processes (a calibration step run once against the
   * cluster before any workload, bench/plan-vs-measured.ts). Absent: the
   * nodes' per-request costs are left out (only the kernel's `itemS`).
   */
  attend?: { memory: AttendProbe; storage: AttendProbe };
  /**
   * Seconds per f32 logit value of the gpu-node → coordinator hand-off
   * beyond its bytes on the link: protobuf encoding and decoding of a
   * [batch, vocab] f32 logits tensor, then greedy sampling of each row
   * (core's run.c sampler), timed in process. @default 0
   */
  sampleLogitS?: number;
}

/** Dense figures of a profile: the roofline's peak FLOP/s and weight-streaming bytes/s. */
export interface DenseFigures {
  /** max over samples of 2·batch·k·n / seconds, FLOP/s. */
  flops: number;
  /** max over samples of k·n·weightBytes / seconds, bytes/s. */
  weightBytesPerS: number;
}

/**
 * Roofline figures of dense compute from timed MatMuls (Williams et al.
 * 2009): the peak is the best achieved FLOP/s (usually the largest batch,
 * compute-bound), the weight bandwidth the best achieved weight bytes/s
 * (usually batch 1, memory-bound). Both are sustained figures, so the
 * cost model uses them with efficiency 1.
 * @throws RangeError when `samples` is empty or a sample is not positive.
 */
export function denseFigures(samples: readonly DenseSample[], weightBytes: number): DenseFigures {
  if (samples.length === 0) throw new RangeError("denseFigures: no dense samples");
  let flops = 0;
  let weightBytesPerS = 0;
  for (const s of samples) {
    if (!(s.seconds > 0 && s.batch > 0 && s.k > 0 && s.n > 0))
      throw new RangeError(`denseFigures: sample ${JSON.stringify(s)} is not positive`);
    flops = Math.max(flops, (2 * s.batch * s.k * s.n) / s.seconds);
    weightBytesPerS = Math.max(weightBytesPerS, (s.k * s.n * weightBytes) / s.seconds);
  }
  return { flops, weightBytesPerS };
}

/** Where the storage-node's KV files are read from, for {@link localNodeSpecs}. */
export type StorageMedium = "page-cache" | "disk";

/** Options of {@link localNodeSpecs}. */
export interface LocalNodeOptions {
  /**
   * Where storage-node reads come from: "page-cache" when the KV files fit
   * in free memory (just written, as in a short bench), "disk" otherwise.
   * @default "page-cache"
   */
  storageMedium?: StorageMedium;
  /** $/h of each node. @default 0 */
  pricePerHour?: number;
  /** KV capacity of the memory-node, bytes. @default profile.memoryBytes / 4 */
  memoryNodeCapacityBytes?: number;
  /** KV capacity of the storage-node, bytes. @default 64 GB */
  storageCapacityBytes?: number;
  /** The storage-node's read buffer (--buffer-bytes: two halves), bytes. @default 64 MiB (its default) */
  storageBufferBytes?: number;
}

/** The three nodes of the local cluster (`tessera run`), as the cost model sees them. */
export interface LocalNodeSpecs {
  gpu: GpuSpec;
  memory: AttentionSpec;
  storage: AttentionSpec;
}

/**
 * Cost-model figures of the local cluster's nodes — gpu-node, memory-node
 * and storage-node processes on one machine — from one profile of it.
 *
 * Assumptions (stated, not fitted):
 * - Shared cores: every process runs on the same `cores`; with one
 *   micro-batch a decode step runs its stages one after another (dense on
 *   the gpu-node, then attention on a node, then dense again), so each stage
 *   is given the whole machine, as measured. Overlapping stages (several
 *   micro-batches) would share the cores; this mapping does not model that.
 * - gpu-node: flops and memoryBandwidth from {@link denseFigures}
 *   (efficiencies 1: measured sustained rates), layerOverheadS = the
 *   measured fixed cost of a layer's graphs; memory = physical memory;
 *   denseCurve = each dense sample's weight bytes/s (k·n·weightBytes /
 *   seconds at its batch), which the cost model interpolates in place of
 *   the roofline; sampleLogitS = `sampleLogitS` (0 when not measured).
 * - Attention nodes with an Attend probe (`attend`), by
 *   {@link fitAttendProbe}: requestComputeS = the compute intercept;
 *   unitOverheadS = max(0, compute slope − itemKvBytes / the node's KV
 *   bytes/s) (the probe's own small context is the roofline's share);
 *   requestOverheadS = max(0, wire intercept − link RTT); unitWireS =
 *   max(0, wire slope − itemWireBytes / link bytes/s). With the probe's
 *   long items: splitMinBytes = the probe's threshold and splitOverheadS =
 *   max(0, mean over its samples of compute − (compute intercept + n·slope)
 *   − n·(long kvBytes − itemKvBytes) / the node's KV bytes/s): what a
 *   request over the threshold costs beyond the short line and its extra KV
 *   (worker hand-off). Without a probe,
 *   unitOverheadS = the kernel's itemS and the others are 0.
 * - memory-node: attention roofline of the kernel's measured KV bytes/s and
 *   FLOP/s on all cores (the memory-node splits long caches over `cores`
 *   threads);
 *   plus the kernel's fixed cost per item (unitOverheadS = itemS).
 * - storage-node: a double buffer reads the next chunk while the kernel
 *   (one thread) works on the current one, so its KV rate is
 *   min(read rate of the medium, one-thread kernel bytes/s), its FLOP/s the
 *   one-thread kernel's; its fsync
 *   "always" appends cost `disk.syncS` each (appendSyncS); unitOverheadS
 *   = itemS as for the memory-node; readBuffer: chunks of half its
 *   buffer (storageBufferBytes / 2), the pipeline's fill at max(read rate
 *   of the medium, one-thread kernel bytes/s) (see the cost model).
 * - Links: every node reaches the others over loopback gRPC: RTT and
 *   bandwidth as measured, sustained fraction 1.
 */
export function localNodeSpecs(p: MachineProfile, o: LocalNodeOptions = {}): LocalNodeSpecs {
  const price = o.pricePerHour ?? 0;
  const d = denseFigures(p.dense, p.denseWeightBytes);
  const medium = (o.storageMedium ?? "page-cache") === "disk" ? p.disk.readBytesPerS : p.disk.cachedReadBytesPerS;
  const link: LinkSpec = { bandwidth: p.rpc.bytesPerS, sustainedFraction: 1, rttS: p.rpc.rttS };
  const attendTerms = (probe: AttendProbe | undefined, kernelRead: number) => {
    if (!probe) return { readBandwidth: kernelRead, unitOverheadS: p.attention.itemS };
    const c = fitAttendProbe(probe);
    const long = probe.long;
    // What each long request costs beyond the short line and its extra KV at the kernel-based rate.
    const split = long && {
      splitMinBytes: long.splitMinBytes,
      splitOverheadS: Math.max(
        0,
        long.samples.reduce(
          (acc, x) =>
            acc +
            x.computeSeconds -
            c.requestComputeS -
            x.items * (c.itemComputeS + (long.kvBytes - probe.itemKvBytes) / kernelRead),
          0,
        ) / long.samples.length,
      ),
    };
    return {
      readBandwidth: kernelRead,
      ...split,
      unitOverheadS: Math.max(0, c.itemComputeS - probe.itemKvBytes / kernelRead),
      requestComputeS: c.requestComputeS,
      requestOverheadS: Math.max(0, c.requestWireS - link.rttS),
      unitWireS: Math.max(0, c.itemWireS - probe.itemWireBytes / link.bandwidth),
    };
  };
  return {
    gpu: {
      kind: "gpu",
      id: "gpu",
      pool: "local",
      pricePerHour: price,
      flops: d.flops,
      flopsEfficiency: 1,
      memoryBandwidth: d.weightBytesPerS,
      bandwidthEfficiency: 1,
      memoryBytes: p.memoryBytes,
      pcieBandwidth: p.memoryReadBytesPerS,
      hostMemoryBytes: p.memoryBytes,
      link,
      layerOverheadS: p.denseLayerOverheadS,
      denseCurve: p.dense.map((x) => ({
        batch: x.batch,
        weightBytesPerS: (x.k * x.n * p.denseWeightBytes) / x.seconds,
      })),
      sampleLogitS: p.sampleLogitS ?? 0,
    },
    memory: {
      kind: "memory",
      id: "memory",
      pool: "local",
      pricePerHour: price,
      writeBandwidth: p.memoryReadBytesPerS,
      bandwidthEfficiency: 1,
      capacityBytes: o.memoryNodeCapacityBytes ?? p.memoryBytes / 4,
      flops: p.attention.flopsPerS,
      flopsEfficiency: 1,
      link,
      ...attendTerms(p.attend?.memory, p.attention.kvBytesPerS),
    },
    storage: {
      kind: "storage",
      id: "storage",
      pool: "local",
      pricePerHour: price,
      writeBandwidth: p.disk.readBytesPerS,
      bandwidthEfficiency: 1,
      capacityBytes: o.storageCapacityBytes ?? 64e9,
      flops: p.attention.flopsPerSOneThread,
      flopsEfficiency: 1,
      link,
      appendSyncS: p.disk.syncS,
      readBuffer: {
        chunkBytes: (o.storageBufferBytes ?? 64 * 2 ** 20) / 2,
        fillBytesPerS: Math.max(medium, p.attention.kvBytesPerSOneThread),
      },
      ...attendTerms(p.attend?.storage, Math.min(medium, p.attention.kvBytesPerSOneThread)),
    },
  };
}

/**
 * Times dense MatMuls x [batch, k] × W [k, n] at each of `batches` with the
 * caller's `time` (seconds of one run, e.g. the best of a few onnxruntime
 * session runs), for {@link denseFigures}. Pick k·n·weightBytes well above
 * the last-level cache so batch 1 streams weights from memory.
 */
export async function profileDense(
  time: (batch: number, k: number, n: number) => Promise<number>,
  batches: readonly number[] = [1, 16, 64],
  k = 2048,
  n = 5632,
): Promise<DenseSample[]> {
  const out: DenseSample[] = [];
  for (const batch of batches) out.push({ batch, k, n, seconds: await time(batch, k, n) });
  return out;
}

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

/**
 * Sequential read bandwidth of the disk under `dir`: a fresh `bytes`-byte
 * file is written and fsync'ed, its pages dropped, then read front to back
 * in `chunk`-byte reads (as the storage-node streams a layer file); best of
 * `reps`; then read again from the page cache. The file is removed after.
 * @throws Error (Node's fs errors) when `dir` is not writable.
 */
export async function measureDiskRead(
  dir: string,
  bytes = 256 * 2 ** 20,
  chunk = 16 * 2 ** 20,
  reps = 2,
): Promise<DiskRead> {
  const path = join(dir, `tessera-disk-profile-${process.pid}.bin`);
  const fh = await open(path, "w+");
  const buf = Buffer.alloc(chunk);
  const readAll = async () => {
    const t0 = performance.now();
    for (let off = 0; off < bytes; off += chunk) await fh.read(buf, 0, chunk, off);
    return (performance.now() - t0) / 1000;
  };
  try {
    for (let off = 0; off < bytes; off += chunk) {
      for (let i = 0; i < chunk; i += 4096) buf.writeUInt32LE((off + i) >>> 0, i);
      await fh.write(buf, 0, chunk, off);
    }
    await fh.datasync();
    let best = Infinity;
    let dropped = true;
    for (let r = 0; r < reps; r++) {
      dropped = dropFilePages(path) && dropped;
      best = Math.min(best, await readAll());
    }
    let cached = Infinity;
    for (let r = 0; r < reps; r++) cached = Math.min(cached, await readAll());
    return {
      readBytesPerS: bytes / best,
      dropped,
      cachedReadBytesPerS: bytes / cached,
      syncS: await measureAppendSync(dir),
    };
  } finally {
    await fh.close();
    await rm(path, { force: true });
  }
}

/**
 * Seconds per durable append with `files` appends in flight (as a
 * storage-node writes one row per sequence of a request, concurrently): each
 * round writes 4 KiB at the end of each of `files` files and fdatasyncs it,
 * all at once; best of `rounds` rounds, wall time ÷ files.
 */
export async function measureAppendSync(dir: string, files = 16, rounds = 4): Promise<number> {
  const paths = Array.from({ length: files }, (_, i) => join(dir, `tessera-sync-profile-${process.pid}-${i}.bin`));
  const handles = await Promise.all(paths.map((p) => open(p, "w+")));
  const row = Buffer.alloc(4096, 3);
  try {
    let best = Infinity;
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      await Promise.all(
        handles.map(async (fh) => {
          await fh.write(row, 0, row.length, r * row.length);
          await fh.datasync();
        }),
      );
      best = Math.min(best, (performance.now() - t0) / 1000);
    }
    return best / files;
  } finally {
    await Promise.all(handles.map((fh) => fh.close()));
    await Promise.all(paths.map((p) => rm(p, { force: true })));
  }
}

const SINK_PATH = "/tessera.profile.v1.Profile/Sink";
const raw = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };

// Runs in a child process (as another node): a grpc-js server whose
// bidirectional Sink stream answers every request message with one empty
// message; prints its port on stdout, exits when stdin closes.
const SINK_SERVER = `
const grpc = require(process.env.TESSERA_GRPC);
const raw = { serialize: (b) => b, deserialize: (b) => b };
const server = new grpc.Server({ "grpc.max_receive_message_length": -1 });
server.addService(
  { Sink: { path: process.env.TESSERA_SINK, requestStream: true, responseStream: true,
    requestSerialize: raw.serialize, requestDeserialize: raw.deserialize,
    responseSerialize: raw.serialize, responseDeserialize: raw.deserialize } },
  { Sink: (call) => { call.on("data", () => call.write(Buffer.alloc(0))); call.on("end", () => call.end()); call.on("error", () => {}); } },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, port) => {
  if (e) { console.error(String(e)); process.exit(1); }
  console.log(port);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
`;

/**
 * Round trip and bandwidth of gRPC messages over loopback as the gpu-node
 * talks to an attention node: one long-lived bidirectional stream (grpc-js,
 * raw byte messages) to a server in a child Node process (another process
 * on the same cores, as the local cluster's nodes). RTT is the median of
 * `calls` empty request/reply pairs; bandwidth `payload` bytes over (best
 * large request's round trip − RTT). Raw bytes: protobuf encoding and the
 * nodes' own request handling are not in these figures.
 * @throws Error when the child cannot start or bind a loopback port.
 */
export async function measureRpcLoopback(calls = 100, payload = 4 * 2 ** 20): Promise<RpcLink> {
  const child = spawn(process.execPath, ["-e", SINK_SERVER], {
    env: {
      ...process.env,
      TESSERA_GRPC: createRequire(import.meta.url).resolve("@grpc/grpc-js"),
      TESSERA_SINK: SINK_PATH,
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let client: grpc.Client | undefined;
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("\n")) resolve(Number(out.trim()));
      });
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.once("error", reject);
      child.once("exit", (code) => reject(new Error(`measureRpcLoopback: server exited (${code}): ${err.trim()}`)));
    });
    client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      "grpc.max_send_message_length": -1,
    });
    const stream = client.makeBidiStreamRequest(SINK_PATH, raw.serialize, raw.deserialize);
    const waiting: { resolve: (s: number) => void; reject: (e: Error) => void; t0: number }[] = [];
    stream.on("data", () => {
      const w = waiting.shift();
      w?.resolve((performance.now() - w.t0) / 1000);
    });
    stream.on("error", (e: Error) => {
      for (const w of waiting.splice(0)) w.reject(e);
    });
    const call = (b: Buffer) =>
      new Promise<number>((resolve, reject) => {
        waiting.push({ resolve, reject, t0: performance.now() });
        stream.write(b);
      });
    const empty = Buffer.alloc(0);
    for (let i = 0; i < 20; i++) await call(empty);
    const rtts: number[] = [];
    for (let i = 0; i < calls; i++) rtts.push(await call(empty));
    rtts.sort((a, b) => a - b);
    const rttS = rtts[Math.floor(rtts.length / 2)]!;
    const big = Buffer.alloc(payload, 7);
    let best = Infinity;
    for (let i = 0; i < 8; i++) best = Math.min(best, await call(big));
    stream.end();
    return { rttS, bytesPerS: payload / Math.max(best - rttS, 1e-9) };
  } finally {
    client?.close();
    child.stdin.end();
    if (child.exitCode === null) child.kill();
  }
}
