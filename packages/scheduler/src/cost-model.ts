/**
 * Roofline cost model of a Tessera placement, in the style of FlexGen's
 * (Sheng et al. 2023, "FlexGen: High-Throughput Generative Inference of Large
 * Language Models with a Single GPU", §4.3 cost model) and Lamina's (Chen et
 * al. 2024, "Efficient and Economic Large Language Model Inference with
 * Attention Offloading", §3 analysis) analyses.
 *
 * Units: seconds, bytes, FLOP, bytes/s, FLOP/s, $/h. Figures are predictions
 * of an idealised machine (every kernel at a fixed fraction of its roofline),
 * not measurements.
 *
 * Formulas (P_l = parameters of one layer, b = sequences in a micro-batch,
 * L = context in positions, kvDim = n_kv_heads · head_dim):
 * - P_l = 2·dim·(n_heads·head_dim) + 2·dim·kvDim + 3·dim·hidden + 2·dim
 *   (wq, wo; wk, wv; w1, w2, w3; two RMSNorm weights) — Llama 2 layout.
 * - Dense time of a layer (roofline, Williams et al. 2009, as FlexGen's
 *   per-layer compute/IO max): max(2·b·P_l / (F·e_F), P_l·B_w / (W·e_W)),
 *   F peak FLOP/s, W memory bandwidth, e_* sustained fractions, B_w bytes per
 *   weight. Weights are re-read for every micro-batch (Lamina §4.2). A
 *   measured gpu-node adds a fixed `layerOverheadS` per layer (graph
 *   launches; 0 for catalogue parts). A measured gpu-node with a
 *   `denseCurve` (MatMul weight bytes/s at a few batches, profile.ts) uses
 *   P_l·B_w·τ(b) instead of the roofline, τ(b) the seconds per weight byte
 *   interpolated linearly in b between the samples, τ_first below the
 *   first, τ_last·b/b_last above the last (FLOP-bound). Reason: between the
 *   two regimes a CPU MatMul is far from the roofline's corner (measured
 *   on the local 2-core machine: batch 16 runs 1.5× batch 1's time where
 *   the roofline says 1×); the same curve times the classifier.
 * - Attention of a layer over a KV cache: bytes = b·L·2·kvDim·B_kv read;
 *   FLOPs = 4·b·n_heads·head_dim·L (q·K and p·V); time = max(FLOPs/(F·e_F),
 *   bytes/(W·e_W)) on the node that holds the KV (Lamina eq. for attention
 *   being memory-bound). A node with a durable append (storage-node,
 *   `appendSyncS` = s_a) writes each unit's new row concurrently with the
 *   read: per layer max(that, u·s_a) for u units, plus u·MANIFEST_SYNCS·s_a
 *   per step (its manifest). A measured node adds a fixed `unitOverheadS`
 *   per unit to the roofline term (kernel set-up per sequence; 0 for
 *   catalogue parts), and a fixed `requestComputeS` per layer (its own
 *   work per Attend request; 0 for catalogue parts). unitOverheadS and
 *   requestComputeS come from the node's `compute_seconds` in real Attend
 *   round trips at 1-64 items (a probe, profile.ts), the line's slope (less
 *   the KV bytes of the probe's context) and intercept. A request whose KV
 *   bytes (u·L·kvPos per layer) reach the node's `splitMinBytes` adds
 *   `splitOverheadS` (a memory-node spreads it over worker threads; from
 *   the probe at a long context; 0 for catalogue parts). A storage-node
 *   with a `readBuffer` (a double buffer of chunks c: read the next while
 *   the kernel folds the current, storage-node.ts) adds the pipeline's
 *   fill and drain, min(c, bytes) / max(R, K) per request, R the medium's
 *   read rate and K the kernel's (readBandwidth = min(R, K)): with n
 *   chunks the stream takes about bytes/min(R, K) + c/max(R, K), which is
 *   the serial bytes/R + bytes/K for one chunk (GPipe-style fill, Huang et
 *   al. 2019); 0 without one (catalogue parts: perfect overlap).
 * - Transfer of a layer to/from attention nodes: q, k, v out
 *   (b·(n_heads·head_dim + 2·kvDim)·B_wire bytes) and the attention output back
 *   (b·n_heads·head_dim·B_wire), each at link bandwidth, plus one RTT, plus
 *   (measured nodes; 0 for catalogue parts) the slowest node's
 *   `requestOverheadS` + u·`unitWireS`: what a real Attend round trip costs
 *   beyond RTT and bytes (protobuf, f16 conversion, event-loop and worker
 *   hand-offs at both ends), the intercept less RTT and the per-item slope
 *   less bytes/bandwidth of (round trip − compute_seconds) in the probe.
 *   Loopback RTT between raw byte streams misses all of that.
 * - Hand-off after a stage: its activations (b·dim·B_wire) to the next
 *   stage, or after the last the logits (b·vocab·4 bytes, f32) to the
 *   coordinator, at link bandwidth plus one RTT; after the last stage
 *   measured nodes add b·vocab·`sampleLogitS` (protobuf encoding and
 *   decoding of the logits and the coordinator's sampling, per logit
 *   value, timed in process; 0 for catalogue parts).
 * - Pipelining of m micro-batches (Lamina's rotational pipelining; the
 *   gpu-node's --micro-batches): the m micro-batches circulate through the
 *   stations (gpu compute, links, attention nodes, PCIe) of a closed loop, so
 *   by the asymptotic bounds of closed queueing networks (Lazowska et al. 1984,
 *   "Quantitative System Performance", §5.2: X ≤ min(N/R, 1/D_max)) a decode
 *   step takes T = max(C, m·D_max), with C the latency of one micro-batch
 *   around the loop for all layers and D_max the largest busy time one
 *   micro-batch puts on one station in one step. m = 1 gives T = C. The bound
 *   is optimistic near C ≈ m·D_max.
 * - Decode: O steps at the mean context L̄ = P + O/2 (attention is linear in
 *   L, so the mean step is exact for a linear model).
 * - Prefill of the batch: per stage max(2·B·P·P_l·n / (F·e_F), n·P_l·B_w/(W·e_W))
 *   plus causal attention 4·B·n_heads·head_dim·P²/2 FLOPs per layer on the
 *   gpu-node (as Lamina keeps prefill on compute devices; Tessera today runs
 *   prompt attention on the attention node), stages in sequence, then the
 *   KV (B·P·n_layers·2·kvDim·B_kv bytes) shipped to its nodes. Stages
 *   pipeline over c = ⌈B·P / 4096⌉ prefill chunks (GPipe, Huang et al. 2019):
 *   Σ s_i/c + (c−1)·max_i s_i/c; the KV shipping is not overlapped.
 * - Throughput = B·O / (prefill + O·T(L̄)) output tokens/s; $ per million
 *   output tokens = price/3600 / throughput · 1e6.
 * - Memory: gpu weights of its layers (+ embedding on the first stage and
 *   final norm + classifier on the last), KV of its layers when KV is in GPU
 *   memory, activations tokens·(4·dim + 2·hidden)·B_act + B·vocab·4 (logits)
 *   with tokens = max(B, min(B·P, 4096)) (prefill chunk of the coordinator's
 *   default --max-prefill-tokens); usable fraction 0.9 of GPU memory
 *   (assumption: CUDA context and allocator slack).
 */
import type { ModelShape, AttentionRole } from "@tessera/core";

/** A network link of a node as the cost model sees it. */
export interface LinkSpec {
  /** bytes/s, one direction. */
  bandwidth: number;
  sustainedFraction: number;
  rttS: number;
}

/** A gpu-node: dense compute (and KV when it stays in GPU memory). */
export interface GpuSpec {
  kind: "gpu";
  /** Node name, e.g. "gpu#0". */
  id: string;
  pool: string;
  pricePerHour: number;
  flops: number;
  flopsEfficiency: number;
  memoryBandwidth: number;
  bandwidthEfficiency: number;
  memoryBytes: number;
  pcieBandwidth: number;
  hostMemoryBytes: number;
  link: LinkSpec;
  /**
   * Fixed seconds per layer per decode step on top of the roofline (graph
   * launches: the gpu-node runs two onnxruntime sessions per layer), as
   * measured by a machine profile (profile.ts). @default 0 (catalogue parts)
   */
  layerOverheadS?: number;
  /**
   * Measured dense speed of this node's execution provider at a few batch
   * sizes (weight bytes/s of a MatMul at that batch, profile.ts); when
   * given, replaces the dense roofline (see {@link denseCurveS}).
   * @default undefined (catalogue parts: the roofline)
   */
  denseCurve?: readonly { batch: number; weightBytesPerS: number }[];
  /**
   * Seconds per logit value (f32) on the last stage's hand-off to the
   * coordinator beyond its bytes on the link: protobuf encoding and
   * decoding of the logits and the coordinator's sampling, so a step adds
   * b·vocab·sampleLogitS; measured by a machine profile.
   * @default 0 (catalogue parts)
   */
  sampleLogitS?: number;
}

/** A memory- or storage-node: attention over the KV cache it holds. */
export interface AttentionSpec {
  kind: AttentionRole;
  id: string;
  pool: string;
  pricePerHour: number;
  /** Read bandwidth of the KV medium, bytes/s (all drives of a storage node). */
  readBandwidth: number;
  /** Write bandwidth of the KV medium, bytes/s. */
  writeBandwidth: number;
  bandwidthEfficiency: number;
  capacityBytes: number;
  flops: number;
  flopsEfficiency: number;
  link: LinkSpec;
  /**
   * Seconds of durability per (unit, layer) KV append when appends of a
   * request run concurrently (a storage-node's write + fdatasync under
   * fsync "always"), as measured by a machine profile (profile.ts); a
   * decode step adds {@link MANIFEST_SYNCS} more per unit (the manifest).
   * @default 0 (memory-nodes, catalogue parts)
   */
  appendSyncS?: number;
  /**
   * Fixed seconds per (unit, layer) of attention on top of the roofline
   * (the kernel's per-sequence set-up), as measured by a machine profile.
   * @default 0 (catalogue parts)
   */
  unitOverheadS?: number;
  /**
   * Fixed seconds of this node's own work per Attend request (one per layer
   * per micro-batch: parsing, planning, replying), from its
   * `compute_seconds` in a probe of real Attend round trips (profile.ts).
   * @default 0 (catalogue parts)
   */
  requestComputeS?: number;
  /**
   * Fixed seconds per Attend round trip beyond the link's RTT and byte time:
   * protobuf encoding and decoding on both ends, f16 conversion, event-loop
   * and worker hand-offs; from the same probe (round trip − compute_seconds
   * − RTT at zero items). @default 0 (catalogue parts)
   */
  requestOverheadS?: number;
  /**
   * Seconds per unit per Attend round trip on the wire side beyond its bytes
   * at link bandwidth (per-item message fields, tensor copies); from the
   * same probe. @default 0 (catalogue parts)
   */
  unitWireS?: number;
  /**
   * Fixed seconds added to an Attend request whose KV bytes (one layer,
   * every unit of the request) reach `splitMinBytes`: a memory-node then
   * spreads the request over worker threads (core's SPLIT_MIN_BYTES), a
   * hand-off and wake-up per request; from the same probe at a long
   * context. @default 0 (catalogue parts)
   */
  splitOverheadS?: number;
  /** KV bytes per request from which `splitOverheadS` applies. @default Infinity */
  splitMinBytes?: number;
  /**
   * A storage-node's double read buffer: KV streams through halves of
   * `chunkBytes`, the next read while the kernel folds the current one, so
   * a request's first chunk is read and its last folded without overlap;
   * that adds min(chunkBytes, request KV bytes) / fillBytesPerS per
   * request, fillBytesPerS = the faster of the medium's read rate and the
   * kernel's rate (readBandwidth being the slower). @default undefined
   * (perfect overlap: catalogue parts)
   */
  readBuffer?: { chunkBytes: number; fillBytesPerS: number };
}

/** Syncs per sequence per decode step for a storage-node's manifest (the file, then its directory; kv-store.ts). */
export const MANIFEST_SYNCS = 2;

export type NodeSpec = GpuSpec | AttentionSpec;

/** What is run: a batch of sequences of the same lengths, and element sizes in bytes. */
export interface Workload {
  /** Sequences decoded together (the running batch). */
  batch: number;
  promptTokens: number;
  outputTokens: number;
  /** Bytes per weight element (2 = bf16/f16). */
  weightBytes: number;
  /** Bytes per KV element. */
  kvBytes: number;
  /** Bytes per activation element sent between nodes (2 = f16 wire). */
  wireBytes: number;
}

/** Defaults of {@link Workload}'s element sizes: bf16 weights and KV, f16 wire. */
export const DEFAULT_ELEMENT_BYTES = { weightBytes: 2, kvBytes: 2, wireBytes: 2 } as const;

/** A pipeline stage: a gpu-node and its layer range [layerStart, layerEnd). */
export interface Stage {
  node: GpuSpec;
  layerStart: number;
  layerEnd: number;
}

/** An attention node's share: `units` (sequence, KV-head group) pairs. */
export interface KvShare {
  node: AttentionSpec;
  units: number;
}

/**
 * Where the KV cache lives: in the GPU memory of each stage ("gpu"), in the
 * host memory of each stage's server read over PCIe (FlexGen-style "host"),
 * or on attention nodes ("nodes"), each sequence split into `headGroups`
 * KV-head groups (HeadInfer-style) and batch × headGroups units spread over
 * the nodes.
 */
export type KvPlacement = { mode: "gpu" } | { mode: "host" } | { mode: "nodes"; headGroups: number; shares: KvShare[] };

/** A full placement of a model for a workload. */
export interface Placement {
  stages: Stage[];
  kv: KvPlacement;
  microBatches: number;
}

/** Memory use of one node, bytes. */
export interface NodeMemory {
  id: string;
  /** "gpu", "host" (host memory of a gpu server, offload baseline), "memory" or "storage". */
  kind: "gpu" | "host" | "memory" | "storage";
  weightsBytes: number;
  kvBytes: number;
  activationBytes: number;
  usedBytes: number;
  /** Usable capacity (after the usable fraction). */
  capacityBytes: number;
}

/** Busy time one micro-batch puts on a station during one decode step, seconds. */
export interface StationLoad {
  /** e.g. "gpu#0 compute", "mem#1 attention", "gpu#0 link", "gpu#0 pcie". */
  station: string;
  busyS: number;
}

/** The cost model's answer for one placement and workload. */
export interface Prediction {
  prefillS: number;
  /** Decode step time at the mean context, seconds. */
  decodeStepS: number;
  /** Latency of one micro-batch around the loop for one step (C), seconds. */
  cycleS: number;
  /** Per station busy time of one micro-batch per step. */
  stations: StationLoad[];
  /** The term that sets decodeStepS: "cycle latency" or the busiest station. */
  bottleneck: string;
  /** Per stage, per micro-batch per step: dense, attention on the GPU, transfer (s). */
  perStage: { id: string; layers: [number, number]; denseS: number; attentionS: number; transferS: number }[];
  /** Per attention node, per micro-batch per step: attention time over all layers (s). */
  perAttentionNode: { id: string; attentionS: number; units: number }[];
  memory: NodeMemory[];
  /** Capacity violations, e.g. "gpu#0 gpu memory: 91.2 GB > 72.0 GB". */
  violations: string[];
  /** Output tokens/s over the whole job (prefill included). */
  tokensPerSecond: number;
  /**
   * Output tokens/s of decode alone (batch / decodeStepS), as when prefill runs
   * elsewhere (prefill/decode disaggregation, as Lamina and DistServe measure).
   */
  decodeTokensPerSecond: number;
  /** $ per million tokens of decode alone. */
  dollarsPerMillionDecodeTokens: number;
  /** Time between two tokens of one sequence in decode, seconds (= decodeStepS). */
  perTokenLatencyS: number;
  pricePerHour: number;
  dollarsPerMillionTokens: number;
}

/** Usable fraction of GPU memory (assumption: CUDA context, allocator slack). */
export const GPU_MEMORY_USABLE = 0.9;
/** Sustained fraction of PCIe one-direction bandwidth (assumption). */
export const PCIE_EFFICIENCY = 0.8;
/** Prefill chunk in tokens (the coordinator's default --max-prefill-tokens). */
export const PREFILL_CHUNK_TOKENS = 4096;

/** Parameters of one transformer layer (Llama layout): 2·dim·qDim + 2·dim·kvDim + 3·dim·hidden + 2·dim. */
export function layerParams(s: ModelShape): number {
  const qDim = s.nHeads * s.headDim;
  const kvDim = s.nKvHeads * s.headDim;
  return 2 * s.dim * qDim + 2 * s.dim * kvDim + 3 * s.dim * s.hiddenDim + 2 * s.dim;
}

/** Parameters outside the layers: embedding + classifier (vocab·dim each) + final norm (dim). */
export function outerParams(s: ModelShape): number {
  return 2 * s.vocabSize * s.dim + s.dim;
}

/** KV bytes one position of one sequence takes in one layer: 2·n_kv_heads·head_dim·B_kv. */
export function kvBytesPerPosition(s: ModelShape, kvBytes: number): number {
  return 2 * s.nKvHeads * s.headDim * kvBytes;
}

/** Roofline time of a kernel: max(flops / (F·e_F), bytes / (W·e_W)), seconds. */
export function roofline(flops: number, bytes: number, peakFlops: number, flopsEff: number, bw: number, bwEff: number) {
  return Math.max(flops / (peakFlops * flopsEff), bytes / (bw * bwEff));
}

/**
 * Seconds per weight byte of a dense MatMul at batch b from a measured curve
 * (module doc): piecewise linear in b between the samples (sorted by
 * batch), 1/weightBytesPerS of the first below it, and linear in b beyond
 * the last (FLOP-bound: τ_last·b/b_last).
 * @throws RangeError when the curve is empty.
 */
export function denseCurveS(curve: readonly { batch: number; weightBytesPerS: number }[], b: number): number {
  if (curve.length === 0) throw new RangeError("denseCurve is empty");
  const pts = [...curve].sort((x, y) => x.batch - y.batch).map((c) => ({ b: c.batch, t: 1 / c.weightBytesPerS }));
  const first = pts[0]!;
  const lastPt = pts[pts.length - 1]!;
  if (b <= first.b) return first.t;
  if (b >= lastPt.b) return (lastPt.t * b) / lastPt.b;
  let i = 1;
  while (pts[i]!.b < b) i++;
  const lo = pts[i - 1]!;
  const hi = pts[i]!;
  return lo.t + ((hi.t - lo.t) * (b - lo.b)) / (hi.b - lo.b);
}

/** Time of a dense MatMul block of `params` weights for b sequences on `g`: measured curve or roofline, seconds. */
function denseBlockS(g: GpuSpec, params: number, b: number, weightBytes: number): number {
  if (g.denseCurve) return params * weightBytes * denseCurveS(g.denseCurve, b);
  return roofline(
    2 * b * params,
    params * weightBytes,
    g.flops,
    g.flopsEfficiency,
    g.memoryBandwidth,
    g.bandwidthEfficiency,
  );
}

/** Dense decode time of one layer for b sequences on `g` (see module doc; roofline or measured curve, + layerOverheadS), seconds. */
export function denseLayerS(s: ModelShape, g: GpuSpec, b: number, weightBytes: number): number {
  return denseBlockS(g, layerParams(s), b, weightBytes) + (g.layerOverheadS ?? 0);
}

/** Classifier (+ final norm) decode time for b sequences on `g` (roofline or measured curve), seconds. */
export function classifierS(s: ModelShape, g: GpuSpec, b: number, weightBytes: number): number {
  return denseBlockS(g, s.vocabSize * s.dim + s.dim, b, weightBytes);
}

/** Attention decode time of one layer for b sequences at context L whose KV is in GPU memory, seconds. */
export function gpuAttentionLayerS(s: ModelShape, g: GpuSpec, b: number, ctx: number, kvBytes: number): number {
  const flops = 4 * b * s.nHeads * s.headDim * ctx;
  const bytes = b * ctx * kvBytesPerPosition(s, kvBytes);
  return roofline(flops, bytes, g.flops, g.flopsEfficiency, g.memoryBandwidth, g.bandwidthEfficiency);
}

const linkTime = (bytes: number, l: LinkSpec) => bytes / (l.bandwidth * l.sustainedFraction);

/** Σ pricePerHour of every node a placement uses, $/h. */
export function placementPrice(p: Placement): number {
  let price = 0;
  for (const st of p.stages) price += st.node.pricePerHour;
  if (p.kv.mode === "nodes") for (const sh of p.kv.shares) price += sh.node.pricePerHour;
  return price;
}

/** KV bytes one unit (a sequence's KV-head group) takes at context `ctx` over all layers. */
export function unitKvBytes(s: ModelShape, ctx: number, kvBytes: number, headGroups: number): number {
  return (s.nLayers * ctx * kvBytesPerPosition(s, kvBytes)) / headGroups;
}

const GB = (n: number) => `${(n / 1e9).toFixed(1)} GB`;

/** Throws RangeError when `placement` cannot run `w` on `s` (see {@link predict}). */
function checkPlacement(s: ModelShape, w: Workload, placement: Placement): void {
  const B = w.batch;
  const m = placement.microBatches;
  if (!Number.isInteger(B) || B < 1) throw new RangeError(`batch must be a positive integer, got ${B}`);
  if (!Number.isInteger(m) || m < 1 || m > B)
    throw new RangeError(`microBatches must be an integer in [1, batch=${B}], got ${m}`);
  let next = 0;
  for (const st of placement.stages) {
    if (st.layerStart !== next || st.layerEnd <= st.layerStart)
      throw new RangeError(
        `stage ${st.node.id}: layers [${st.layerStart}, ${st.layerEnd}) do not follow layer ${next}`,
      );
    next = st.layerEnd;
  }
  if (next !== s.nLayers || placement.stages.length === 0)
    throw new RangeError(`stages cover ${next} of ${s.nLayers} layers`);
  const kv = placement.kv;
  if (kv.mode === "nodes") {
    const units = kv.shares.reduce((a, sh) => a + sh.units, 0);
    if (units !== B * kv.headGroups)
      throw new RangeError(`KV shares hold ${units} units, expected batch × headGroups = ${B * kv.headGroups}`);
    if (s.nKvHeads % kv.headGroups !== 0)
      throw new RangeError(`headGroups ${kv.headGroups} does not divide n_kv_heads ${s.nKvHeads}`);
  }
}

/** What every part of one prediction shares: the inputs, derived sizes, and the figures gathered so far. */
interface PredictState {
  s: ModelShape;
  w: Workload;
  placement: Placement;
  /** Micro-batches. */
  m: number;
  /** Sequences per micro-batch. */
  b: number;
  ctxMean: number;
  ctxMax: number;
  /** KV bytes per position (all KV heads, one layer). */
  kvPos: number;
  /** q + k + v bytes sent to the attention nodes per layer per micro-batch. */
  sendBytesLayer: number;
  /** Attention output bytes received per layer per micro-batch. */
  recvBytesLayer: number;
  stations: StationLoad[];
  perStage: Prediction["perStage"];
  perAttentionNode: Prediction["perAttentionNode"];
  memory: NodeMemory[];
  violations: string[];
  /** Latency of one decode step through every stage (and the slowest attention node), seconds. */
  cycle: number;
}

/**
 * The attention nodes' side of a decode step (KV on nodes): their stations,
 * KV memory and the per-layer latency of send + slowest node + receive +
 * RTT, which each gpu stage waits for per layer; adds the slowest node's
 * once-per-step manifest syncs to the cycle.
 * @returns that per-layer latency, seconds (0 unless KV is on nodes).
 */
function attentionNodeSide(st: PredictState): number {
  const { s, w, placement, m, ctxMean, ctxMax, kvPos } = st;
  const kv = placement.kv;
  if (kv.mode !== "nodes") return 0;
  const B = w.batch;
  let slowestStepSync = 0; // manifest syncs of the slowest node, once per step
  let slowestWire = 0; // request overhead + per-unit wire cost of the slowest node, one layer
  const totalUnits = B * kv.headGroups;
  let slowest = 0;
  let rtt = 0;
  for (const sh of kv.shares) {
    const a = sh.node;
    const unitsPerMb = sh.units / m;
    const bytes = (unitsPerMb * ctxMean * kvPos) / kv.headGroups;
    const flops = (4 * unitsPerMb * s.nHeads * s.headDim * ctxMean) / kv.headGroups;
    const sync = a.appendSyncS ?? 0;
    const layerS =
      Math.max(
        roofline(flops, bytes, a.flops, a.flopsEfficiency, a.readBandwidth, a.bandwidthEfficiency) +
          unitsPerMb * (a.unitOverheadS ?? 0),
        unitsPerMb * sync,
      ) +
      (a.requestComputeS ?? 0) +
      (bytes >= (a.splitMinBytes ?? Infinity) ? (a.splitOverheadS ?? 0) : 0) +
      (a.readBuffer ? Math.min(a.readBuffer.chunkBytes, bytes) / a.readBuffer.fillBytesPerS : 0);
    slowestWire = Math.max(slowestWire, (a.requestOverheadS ?? 0) + unitsPerMb * (a.unitWireS ?? 0));
    const stepSync = unitsPerMb * MANIFEST_SYNCS * sync;
    slowest = Math.max(slowest, layerS);
    slowestStepSync = Math.max(slowestStepSync, stepSync);
    rtt = Math.max(rtt, a.link.rttS);
    st.perAttentionNode.push({ id: a.id, attentionS: layerS * s.nLayers + stepSync, units: sh.units });
    st.stations.push({ station: `${a.id} attention`, busyS: layerS * s.nLayers + stepSync });
    const frac = sh.units / totalUnits;
    st.stations.push({
      station: `${a.id} link`,
      busyS: (s.nLayers * linkTime(Math.max(st.sendBytesLayer, st.recvBytesLayer) * frac, a.link)) / 1,
    });
    const kvUsed = sh.units * unitKvBytes(s, ctxMax, w.kvBytes, kv.headGroups);
    st.memory.push({
      id: a.id,
      kind: a.kind,
      weightsBytes: 0,
      kvBytes: kvUsed,
      activationBytes: 0,
      usedBytes: kvUsed,
      capacityBytes: a.capacityBytes,
    });
    if (kvUsed > a.capacityBytes) st.violations.push(`${a.id} ${a.kind} KV: ${GB(kvUsed)} > ${GB(a.capacityBytes)}`);
  }
  st.cycle += slowestStepSync;
  return slowest + rtt + slowestWire;
}

/**
 * Decode step of gpu stage `i` (dense, attention where KV is on the GPU or
 * host, transfers, waiting for attention nodes `attnChainLayer` per layer):
 * adds its chain to the cycle, its stations, per-stage figures and memory.
 */
function gpuStageDecode(st: PredictState, i: number, attnChainLayer: number): void {
  const { s, w, placement, b, ctxMean, ctxMax, kvPos } = st;
  const kv = placement.kv;
  const stage = placement.stages[i]!;
  const last = placement.stages.length - 1;
  const g = stage.node;
  const n = stage.layerEnd - stage.layerStart;
  const dense = n * denseLayerS(s, g, b, w.weightBytes) + (i === last ? classifierS(s, g, b, w.weightBytes) : 0);
  let attention = 0;
  let transfer = 0;
  let chain = dense;
  if (kv.mode === "gpu" || kv.mode === "host") {
    attention = n * gpuAttentionLayerS(s, g, b, ctxMean, w.kvBytes);
    chain += attention;
    if (kv.mode === "host") {
      const pcie = (n * b * ctxMean * kvPos) / (g.pcieBandwidth * PCIE_EFFICIENCY);
      st.stations.push({ station: `${g.id} pcie`, busyS: pcie });
      chain += pcie;
    }
  } else {
    const sendS = linkTime(st.sendBytesLayer, g.link);
    const recvS = linkTime(st.recvBytesLayer, g.link);
    transfer = n * (sendS + recvS);
    chain += n * (sendS + recvS + attnChainLayer);
  }
  // Activations to the next stage, or logits (f32) to the coordinator after the last.
  const handoff = i === last ? b * s.vocabSize * 4 : b * s.dim * w.wireBytes;
  const handoffS = linkTime(handoff, g.link) + g.link.rttS + (i === last ? b * s.vocabSize * (g.sampleLogitS ?? 0) : 0);
  transfer += handoffS;
  chain += handoffS;
  st.cycle += chain;
  st.stations.push({ station: `${g.id} compute`, busyS: dense + attention });
  const linkBusy =
    kv.mode === "nodes"
      ? n * linkTime(Math.max(st.sendBytesLayer, st.recvBytesLayer), g.link) + linkTime(handoff, g.link)
      : linkTime(handoff, g.link);
  st.stations.push({ station: `${g.id} link`, busyS: linkBusy });
  st.perStage.push({
    id: g.id,
    layers: [stage.layerStart, stage.layerEnd],
    denseS: dense,
    attentionS: attention,
    transferS: transfer,
  });
  gpuStageMemory(st, i, n, n * w.batch * ctxMax * kvPos);
}

/** Memory of gpu stage `i` (weights, KV on the GPU, activations; host KV when offloaded) and its violations. */
function gpuStageMemory(st: PredictState, i: number, n: number, kvBytes: number): void {
  const { s, w, placement } = st;
  const kv = placement.kv;
  const g = placement.stages[i]!.node;
  const last = placement.stages.length - 1;
  const B = w.batch;
  const prefillTokens = Math.max(B, Math.min(B * w.promptTokens, PREFILL_CHUNK_TOKENS));
  const weights =
    (n * layerParams(s) + (i === 0 ? s.vocabSize * s.dim : 0) + (i === last ? s.vocabSize * s.dim + s.dim : 0)) *
    w.weightBytes;
  const activations = prefillTokens * (4 * s.dim + 2 * s.hiddenDim) * w.wireBytes + B * s.vocabSize * 4;
  const gpuKv = kv.mode === "gpu" ? kvBytes : 0;
  const used = weights + gpuKv + activations;
  const cap = g.memoryBytes * GPU_MEMORY_USABLE;
  st.memory.push({
    id: g.id,
    kind: "gpu",
    weightsBytes: weights,
    kvBytes: gpuKv,
    activationBytes: activations,
    usedBytes: used,
    capacityBytes: cap,
  });
  if (used > cap) st.violations.push(`${g.id} gpu memory: ${GB(used)} > ${GB(cap)}`);
  if (kv.mode === "host") {
    st.memory.push({
      id: g.id,
      kind: "host",
      weightsBytes: 0,
      kvBytes,
      activationBytes: 0,
      usedBytes: kvBytes,
      capacityBytes: g.hostMemoryBytes,
    });
    if (kvBytes > g.hostMemoryBytes)
      st.violations.push(`${g.id} host memory (KV offload): ${GB(kvBytes)} > ${GB(g.hostMemoryBytes)}`);
  }
}

/**
 * Prefill of the whole batch: each stage's time, pipelined over prefill
 * chunks (GPipe, Huang et al. 2019: c chunks, stage i takes s_i/c per chunk,
 * total Σ s_i/c + (c − 1)·max s_i/c), plus shipping the prompt's KV to where
 * it lives (the slowest link or write), seconds.
 */
function prefillS(st: PredictState): number {
  const { s, w, placement, kvPos } = st;
  const kv = placement.kv;
  const B = w.batch;
  const P = w.promptTokens;
  const prefillStage: number[] = [];
  let prefillKvShip = 0;
  for (const stage of placement.stages) {
    const g = stage.node;
    const n = stage.layerEnd - stage.layerStart;
    const pl = layerParams(s);
    const denseFlops = 2 * B * P * pl * n;
    const attnFlops = 4 * B * s.nHeads * s.headDim * ((P * P) / 2) * n;
    prefillStage.push(
      roofline(
        denseFlops,
        n * pl * w.weightBytes,
        g.flops,
        g.flopsEfficiency,
        g.memoryBandwidth,
        g.bandwidthEfficiency,
      ) +
        attnFlops / (g.flops * g.flopsEfficiency),
    );
    const stageKv = n * B * P * kvPos;
    if (kv.mode === "nodes") prefillKvShip = Math.max(prefillKvShip, linkTime(stageKv, g.link));
    if (kv.mode === "host") prefillKvShip = Math.max(prefillKvShip, stageKv / (g.pcieBandwidth * PCIE_EFFICIENCY));
  }
  if (kv.mode === "nodes") {
    for (const sh of kv.shares) {
      const a = sh.node;
      const bytes = (sh.units * P * s.nLayers * kvPos) / kv.headGroups;
      const rate = Math.min(a.link.bandwidth * a.link.sustainedFraction, a.writeBandwidth * a.bandwidthEfficiency);
      prefillKvShip = Math.max(prefillKvShip, bytes / rate);
    }
  }
  const chunks = Math.max(1, Math.ceil((B * P) / PREFILL_CHUNK_TOKENS));
  const prefillSum = prefillStage.reduce((a, v) => a + v, 0);
  return prefillSum / chunks + ((chunks - 1) * Math.max(...prefillStage)) / chunks + prefillKvShip;
}

/**
 * Predicts prefill time, decode step time, memory use, tokens/s and $/Mtok of
 * `placement` running `w` on model `s` (formulas in the module doc).
 * Capacity overruns are reported in `violations`, not thrown.
 * @throws RangeError when the placement does not cover layers 0..n_layers-1
 *   contiguously, the batch or micro-batch count is not a positive integer,
 *   or KV shares do not add up to batch × headGroups.
 */
export function predict(s: ModelShape, w: Workload, placement: Placement): Prediction {
  checkPlacement(s, w, placement);
  const B = w.batch;
  const m = placement.microBatches;
  const b = B / m; // sequences per micro-batch
  const qDim = s.nHeads * s.headDim;
  const kvDim = s.nKvHeads * s.headDim;
  const st: PredictState = {
    s,
    w,
    placement,
    m,
    b,
    ctxMean: w.promptTokens + w.outputTokens / 2,
    ctxMax: w.promptTokens + w.outputTokens,
    kvPos: kvBytesPerPosition(s, w.kvBytes),
    sendBytesLayer: b * (qDim + 2 * kvDim) * w.wireBytes,
    recvBytesLayer: b * qDim * w.wireBytes,
    stations: [],
    perStage: [],
    perAttentionNode: [],
    memory: [],
    violations: [],
    cycle: 0,
  };
  // Attention-node side first (its stations and memory come first), then the gpu stages.
  const attnChainLayer = attentionNodeSide(st);
  for (let i = 0; i < placement.stages.length; i++) gpuStageDecode(st, i, attnChainLayer);
  const prefill = prefillS(st);
  const O = w.outputTokens;
  const { cycle, stations } = st;

  let busiest: StationLoad = { station: "", busyS: 0 };
  for (const station of stations) if (station.busyS > busiest.busyS) busiest = station;
  const step = Math.max(cycle, m * busiest.busyS);
  const bottleneck = cycle >= m * busiest.busyS ? "cycle latency" : busiest.station;
  const tokensPerSecond = (B * O) / (prefill + O * step);
  const pricePerHour = placementPrice(placement);
  return {
    prefillS: prefill,
    decodeStepS: step,
    cycleS: cycle,
    stations,
    bottleneck,
    perStage: st.perStage,
    perAttentionNode: st.perAttentionNode,
    memory: st.memory,
    violations: st.violations,
    tokensPerSecond,
    decodeTokensPerSecond: B / step,
    perTokenLatencyS: step,
    pricePerHour,
    dollarsPerMillionTokens: (pricePerHour / 3600 / tokensPerSecond) * 1e6,
    dollarsPerMillionDecodeTokens: (pricePerHour / 3600 / (B / step)) * 1e6,
  };
}
