/**
 * A gpu-node's self-profile (issue 4, item 1): dense FLOP/s and weight
 * bytes/s of its onnxruntime execution provider, the fixed cost of a layer's
 * graphs, and the memory its weights may use, as a tessera.v1.NodeProfile.
 *
 * The timers run the graphs the node itself runs ({@link projection}, the
 * pre- and post-attention graphs) with the node's session options, so the
 * figures are those of its Forward steps; packages/scheduler's
 * `profileDense` and `denseFigures` turn the timings into the roofline's
 * figures. The timers are the bench's too (bench/plan-vs-measured.ts
 * profiles the local machine with them), so the cost model's figures come
 * from one implementation.
 */
import { spawnSync } from "node:child_process";
import { availableParallelism, totalmem } from "node:os";
import { performance } from "node:perf_hooks";
import * as ort from "onnxruntime-node";
import { ConfigError, type ModelShape } from "@tessera/core";
import { synthesizeWeights } from "@tessera/model";
import { NodeProfileSchema, create, type NodeProfile } from "@tessera/proto";
import { denseFigures } from "@tessera/scheduler";
import { profileDense } from "@tessera/profiling";
import type { ExecutionProvider } from "./dense-model.js";
import {
  POST,
  PRE,
  buildPostAttentionGraph,
  buildPreAttentionGraph,
  projection,
  ropeRows,
  type WeightDtype,
} from "./llama-graphs.js";
import { OnnxGraphBuilder } from "./onnx-builder.js";

/** How {@link profileGpuNode} and the timers run onnxruntime: the gpu-node's compiled options fit. */
export interface GpuProfileOptions {
  /** @default "cpu" */
  readonly executionProvider?: ExecutionProvider;
  /** onnxruntime intra-op threads per session. @default onnxruntime's */
  readonly intraOpThreads?: number | undefined;
  /** Element type of the MatMul weights. @default "f32" */
  readonly weightDtype?: WeightDtype;
  /** $/h advertised with the profile. @default 0 */
  readonly pricePerHour?: number;
}

/**
 * Sizes of the dense samples {@link profileGpuNode} times: x [batch, k] ×
 * W [k, n] at each batch, the sizes the bench profiles with (`profileDense`'s
 * defaults, a Llama-7B-like FFN slice with k·n = 2048·5632, 44 MiB of f32
 * weights), each timed over {@link MATMUL_STREAM_BYTES} of weight copies
 * (12 in f32) so that batch 1 streams its weights from memory.
 */
export const GPU_PROFILE_SIZES = { batches: [1, 16, 64], k: 2048, n: 5632 } as const;

/** Session options of the gpu-node's sessions (dense-model.ts): provider, threads, no spinning. */
function sessionOptions(o: GpuProfileOptions): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [o.executionProvider ?? "cpu"],
    graphOptimizationLevel: "all",
    ...(o.intraOpThreads !== undefined ? { intraOpNumThreads: o.intraOpThreads } : {}),
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  };
}

/** Median of `xs` (the upper one of an even count). */
const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Bytes of weights {@link createOrtMatMulTimer} spreads its runs over by
 * default: 512 MiB, more than a typical last-level cache (this machine's L3
 * is 480 MiB), so a run finds its weights in memory, as a large model's
 * layers do, and not in cache.
 */
export const MATMUL_STREAM_BYTES = 512 * 2 ** 20;

/** How {@link createOrtMatMulTimer} times. */
export interface OrtMatMulTimerOptions {
  /**
   * Bytes the weight copies of one shape total at least: copies =
   * ⌈streamBytes / (k·n·weight element bytes)⌉ (12 at 2048 × 5632 f32, 24 in
   * f16). @default {@link MATMUL_STREAM_BYTES}
   */
  readonly streamBytes?: number;
  /** Timed rounds over the copies, after one warm-up round. @default 2 */
  readonly rounds?: number;
}

/** A MatMul timer for `profileDense` of @tessera/profiling, holding the sessions of each weight shape. */
export interface OrtMatMulTimer {
  /**
   * Seconds of one run of x [batch, k] (f32) × W [k, n] (W an initializer of
   * the options' weight dtype, as the gpu-node's projections), weights
   * streamed from memory: the runs rotate over the shape's weight copies
   * (distinct values, sessions built on the first call for the shape); median
   * of the timed rounds' runs after a warm-up round.
   * @throws onnxruntime's Error when the provider cannot build or run the graph.
   */
  time(batch: number, k: number, n: number): Promise<number>;
  /** Releases the sessions. */
  release(): Promise<void>;
}

/**
 * Creates an onnxruntime MatMul timer with the gpu-node's session options
 * (provider, intra-op threads, no spinning) and weight dtype. Each shape gets
 * enough sessions with distinct weights to total `streamBytes` (12 × 44 MiB
 * = 528 MiB at 2048 × 5632 f32), so that no run finds its weights in the
 * last-level cache: one weight matrix alone would stay cache-resident and
 * over-report the weight bytes/s of decode.
 */
export function createOrtMatMulTimer(o: GpuProfileOptions = {}, t: OrtMatMulTimerOptions = {}): OrtMatMulTimer {
  const dtype = o.weightDtype ?? "f32";
  const elementBytes = dtype === "f16" ? 2 : 4;
  const streamBytes = t.streamBytes ?? MATMUL_STREAM_BYTES;
  const rounds = t.rounds ?? 2;
  const shapes = new Map<string, Promise<ort.InferenceSession[]>>();
  const build = async (k: number, n: number) => {
    const copies = Math.max(1, Math.ceil(streamBytes / (k * n * elementBytes)));
    const sessions: ort.InferenceSession[] = [];
    // Copy c is a base pattern rotated by c·7919 elements: distinct weights, filled at memcpy speed.
    const base = new Float32Array(k * n);
    for (let i = 0; i < base.length; i++) base[i] = ((i * 37) % 1000) / 1000 - 0.5;
    const w = new Float32Array(k * n);
    try {
      for (let c = 0; c < copies; c++) {
        const g = new OnnxGraphBuilder("matmul");
        const x = g.input("x", "float32", ["B", k]);
        const off = (c * 7919) % w.length;
        w.set(base.subarray(off));
        w.set(base.subarray(0, off), w.length - off);
        projection(g, x, "w", w, [k, n], dtype, "y");
        g.output("y", "float32", ["B", n]);
        sessions.push(await ort.InferenceSession.create(g.toBytes(), sessionOptions(o)));
      }
    } catch (err) {
      for (const s of sessions) await s.release();
      throw err;
    }
    return sessions;
  };
  const sessionsOf = (k: number, n: number) => {
    const key = `${k}x${n}`;
    let s = shapes.get(key);
    if (!s) shapes.set(key, (s = build(k, n)));
    return s;
  };
  return {
    async time(batch, k, n) {
      const sessions = await sessionsOf(k, n);
      const feeds = { x: new ort.Tensor("float32", new Float32Array(batch * k).fill(0.01), [batch, k]) };
      const times: number[] = [];
      for (let round = 0; round <= rounds; round++)
        for (const s of sessions) {
          const t0 = performance.now();
          await s.run(feeds);
          if (round > 0) times.push((performance.now() - t0) / 1000);
        }
      return median(times);
    },
    async release() {
      const all = [...shapes.values()];
      shapes.clear();
      const settled = await Promise.allSettled(all);
      for (const r of settled) if (r.status === "fulfilled") for (const s of r.value) await s.release();
    },
  };
}

/**
 * Idle milliseconds before each graph of {@link timeOrtLayerOverhead} by
 * default: 1 ms, about an Attend round trip on loopback, the gap after which
 * the gpu-node runs each of a layer's graphs during decode.
 */
export const LAYER_GAP_MS = 1;

/**
 * Seconds of one layer's graphs (the gpu-node's pre- and post-attention
 * graphs, llama-graphs.ts, in the options' weight dtype) at batch 1 on a
 * tiny shape (dim 64, hidden 64, 2 heads of 32): the fixed cost of a layer
 * per decode step (graph launches, the dozens of small ops around the
 * MatMuls) with almost no MatMul work in it. With `gapMs` > 0 each graph
 * runs after `gapMs` of idle time, as the gpu-node's graphs run after an
 * Attend round trip (its intra-op threads asleep, caches cooler: 0.1-0.3 ms
 * per layer on the 2-core dev machine against 0.04 ms back to back), timing
 * only the runs; median of `reps` after a warm-up layer. With 0, best of
 * `reps` back to back.
 * @throws onnxruntime's Error when the provider cannot build or run the graphs.
 */
export async function timeOrtLayerOverhead(
  o: GpuProfileOptions = {},
  { gapMs = LAYER_GAP_MS, reps = 20 }: { readonly gapMs?: number; readonly reps?: number } = {},
): Promise<number> {
  const shape: ModelShape = {
    dim: 64,
    hiddenDim: 64,
    nLayers: 1,
    nHeads: 2,
    nKvHeads: 2,
    vocabSize: 8,
    seqLen: 64,
    headDim: 32,
    ropeTheta: 10000,
    normEps: 1e-5,
  };
  const w = synthesizeWeights(shape, 7).layers[0]!;
  const dtype = o.weightDtype ?? "f32";
  const pre = await ort.InferenceSession.create(
    buildPreAttentionGraph(shape, w, 0, dtype).toBytes(),
    sessionOptions(o),
  );
  try {
    const post = await ort.InferenceSession.create(
      buildPostAttentionGraph(shape, w, 0, dtype).toBytes(),
      sessionOptions(o),
    );
    try {
      const x = new ort.Tensor("float32", new Float32Array(64).fill(0.1), [1, 64]);
      const rope = ropeRows(shape, [3n]);
      const cos = new ort.Tensor("float32", rope.cos, [1, shape.headDim / 2]);
      const sin = new ort.Tensor("float32", rope.sin, [1, shape.headDim / 2]);
      const att = new ort.Tensor("float32", new Float32Array(64).fill(0.1), [1, 64]);
      const pause = () => new Promise<void>((resolve) => setTimeout(resolve, gapMs));
      const layer = async () => {
        let t = performance.now();
        await pre.run({ [PRE.x]: x, [PRE.cos]: cos, [PRE.sin]: sin });
        let busy = performance.now() - t;
        if (gapMs > 0) await pause();
        t = performance.now();
        await post.run({ [POST.x]: x, [POST.o]: att });
        busy += performance.now() - t;
        if (gapMs > 0) await pause();
        return busy / 1000;
      };
      await layer();
      const times: number[] = [];
      for (let r = 0; r < reps; r++) times.push(await layer());
      return gapMs > 0 ? median(times) : Math.min(...times);
    } finally {
      await post.release();
    }
  } finally {
    await pre.release();
  }
}

/**
 * Memory the weights and activations may use, bytes: on "cuda" the first
 * GPU's total memory as `nvidia-smi` reports it (0 when it cannot be run),
 * on "cpu" the machine's physical memory.
 */
export function deviceMemoryBytes(provider: ExecutionProvider): number {
  if (provider === "cpu") return totalmem();
  const r = spawnSync("nvidia-smi", ["--query-gpu=memory.total", "--format=csv,noheader,nounits"], {
    encoding: "utf8",
    timeout: 5000,
  });
  const mib = r.status === 0 ? Number(r.stdout.split("\n")[0]?.trim()) : NaN;
  return Number.isFinite(mib) && mib > 0 ? mib * 2 ** 20 : 0;
}

/**
 * Measures this machine as a gpu-node (about 3 s on the 2-core dev machine,
 * f32 on the CPU provider, most of it building the 12 weight copies'
 * sessions; 528 MiB of weights held until the MatMuls are timed): dense
 * MatMuls of {@link GPU_PROFILE_SIZES} with {@link createOrtMatMulTimer} through
 * `profileDense`, their roofline figures (`denseFigures`: best FLOP/s, best
 * weight bytes/s, weights streamed from memory), the fixed cost of a layer
 * ({@link timeOrtLayerOverhead} with its default {@link LAYER_GAP_MS} of idle
 * before each graph, as between Attend round trips: the figure the cost
 * model charges per layer and decode step, `layerOverheadS`, and the one
 * bench/plan-vs-measured.ts maps) and {@link deviceMemoryBytes}.
 * @returns a NodeProfile of role "gpu" (figures case "gpu") with the options' price.
 * @throws onnxruntime's Error when the execution provider cannot run the graphs.
 */
export async function profileGpuNode(o: GpuProfileOptions = {}): Promise<NodeProfile> {
  const t0 = performance.now();
  const provider = o.executionProvider ?? "cpu";
  const weightElementBytes = (o.weightDtype ?? "f32") === "f16" ? 2 : 4;
  const timer = createOrtMatMulTimer(o);
  let dense;
  try {
    const { batches, k, n } = GPU_PROFILE_SIZES;
    dense = await profileDense((b, kk, nn) => timer.time(b, kk, nn), batches, k, n);
  } finally {
    await timer.release();
  }
  const layerOverheadSeconds = await timeOrtLayerOverhead(o);
  const { flops, weightBytesPerS } = denseFigures(dense, weightElementBytes);
  return create(NodeProfileSchema, {
    role: "gpu",
    pricePerHour: o.pricePerHour ?? 0,
    cores: availableParallelism(),
    memoryBytes: BigInt(totalmem()),
    profileSeconds: (performance.now() - t0) / 1000,
    figures: {
      case: "gpu",
      value: {
        executionProvider: provider,
        dense,
        weightElementBytes,
        flops,
        weightBytesPerSecond: weightBytesPerS,
        layerOverheadSeconds,
        deviceMemoryBytes: BigInt(deviceMemoryBytes(provider)),
      },
    },
  });
}

/**
 * Checks that a given profile is a gpu-node's: role "gpu" and figures case
 * "gpu" (so a memory-node's profile cannot be advertised by a gpu-node).
 * @throws ConfigError naming the option "profile".
 */
export function checkGpuProfile(p: NodeProfile): void {
  if (p.role !== "gpu" || p.figures.case !== "gpu")
    throw new ConfigError(
      "profile",
      `is a ${p.role || "(no role)"} profile (figures ${p.figures.case ?? "none"}), not a gpu-node's`,
    );
}
