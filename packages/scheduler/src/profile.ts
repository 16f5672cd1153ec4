/**
 * Machine profiles (issue 4, item 1): what a node measures about itself in a
 * few seconds, and the mapping of such a profile to the cost model's node
 * figures ({@link GpuSpec}, {@link AttentionSpec}). Pure: the measuring
 * functions live in @tessera/profiling (`profileDense`,
 * `measureReadBandwidth`, `measureAttentionKernel`, `measureDiskRead`,
 * `measureAppendSync`, `measureRpcLoopback`), shared by the bench
 * (bench/plan-vs-measured.ts) and each node's self-profile at start; this
 * file holds the figures they return and {@link fitAttendProbe},
 * {@link denseFigures} and {@link localNodeSpecs}.
 */
import type { AttentionSpec, GpuSpec, LinkSpec } from "./cost-model.js";

/** One timed MatMul: x [batch, k] × W [k, n], weights of `weightBytes` per element; seconds per run. */
export interface DenseSample {
  batch: number;
  k: number;
  n: number;
  seconds: number;
}

/** Decode attention kernel roofline: KV bytes/s and FLOP/s while attending (see `measureAttentionKernel` of @tessera/profiling). */
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
