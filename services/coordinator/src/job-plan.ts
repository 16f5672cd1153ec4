/**
 * The coordinator's use of the throughput-per-dollar planner
 * (packages/scheduler) for a live job: the nodes' Info (price, profile,
 * capacity) becomes the planner's cluster, the job's batch its workload,
 * and the plan decides the pipeline's layer ranges and how many sequences
 * (KV-head groups) each attention node holds. The live constraints: every
 * gpu-node is a stage in the order given, the KV cache lives on attention
 * nodes (gpu-nodes hold none), the running batch and the KV-head groups are
 * the job's (maxBatchSequences, kvHeadGroups), so the planner chooses which
 * attention nodes to use and their shares, to maximise tokens/s per $/h.
 *
 * Figures a node did not measure (started with --profile off) are
 * assumptions, stated here: a gpu-node of unknown speed is as fast as the
 * others (so layers split evenly, as before profiles existed): 1 TFLOP/s,
 * 100 GB/s of weights, memory unbounded (1e15 bytes); weights are of the
 * element size the first gpu-node's profile gives (4, f32, when none); an
 * attention node reads its KV at its advertised read bandwidth, else 10
 * GB/s, writes at its read rate, and computes at 1 TFLOP/s; links carry
 * 10 GB/s (loopback or a fast NIC) with the RTT the coordinator measured on
 * its Info call (the second of two calls, so a survey costs two round
 * trips per node). A price of 0 (unknown) counts as free, so such nodes are
 * preferred on equal speed.
 */
import {
  Attention,
  GpuNode,
  RpcError,
  type Client,
  type InfoResponse,
  JobPlanSchema,
  create,
  type JobPlan,
  type NodeProfile,
} from "@tessera/proto";
import type { ModelShape, AttentionRole } from "@tessera/core";
import {
  plan,
  stageLayers,
  type AttentionSpec,
  type GpuSpec,
  type LinkSpec,
  type PlanResult,
  type Workload,
} from "@tessera/scheduler";
import { splitLayers, type LayerRange } from "./pipeline.js";

/** What the coordinator learnt of a gpu-node from its Info. */
export interface GpuSurvey {
  address: string;
  pricePerHour: number;
  profile: NodeProfile | undefined;
  /** Seconds of an Info round trip (the second of two calls). */
  rttS: number;
}

/** What the coordinator learnt of an attention node from its Info. */
export interface AttentionSurvey {
  role: AttentionRole;
  address: string;
  info: InfoResponse;
  rttS: number;
}

/** Link assumed between nodes (bytes/s) when nothing is measured. */
export const ASSUMED_LINK_BYTES_PER_S = 10e9;
/** Read bandwidth assumed for an attention node that advertises none, bytes/s. */
export const ASSUMED_READ_BYTES_PER_S = 10e9;
/** FLOP/s assumed for an attention node's kernel when unmeasured. */
export const ASSUMED_ATTENTION_FLOPS = 1e12;
/** Element sizes of a live job: f32 KV on the nodes, f16 activations on the wire. */
const KV_BYTES = 4;
const WIRE_BYTES = 2;

/** Times `call` twice (the first may set up the connection) and returns the second's answer and seconds. */
async function timed<T>(call: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  await call();
  const t0 = performance.now();
  const value = await call();
  return { value, seconds: (performance.now() - t0) / 1000 };
}

/**
 * Asks each gpu-node its Info (price, profile). A node that does not answer
 * Info (an older node: UNIMPLEMENTED; the job's Load names unreachable
 * ones), and every node when `signal` aborts, is surveyed as unprofiled and
 * of unknown price: the caller checks the signal.
 */
export async function surveyGpuNodes(
  addresses: readonly string[],
  client: (address: string) => Client<typeof GpuNode>,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<GpuSurvey[]> {
  return Promise.all(
    addresses.map(async (address): Promise<GpuSurvey> => {
      try {
        const { value, seconds } = await timed(() => client(address).info({}, { deadline: timeoutMs, signal }));
        return { address, pricePerHour: value.pricePerHour, profile: value.profile, rttS: seconds };
      } catch {
        return { address, pricePerHour: 0, profile: undefined, rttS: 0 };
      }
    }),
  );
}

/**
 * Asks each attention node its Info; `onMissing` is told of each that does
 * not answer (and it is left out).
 */
export async function surveyAttentionNodes(
  nodes: readonly { role: AttentionRole; address: string }[],
  client: (address: string) => Client<typeof Attention>,
  timeoutMs: number,
  signal: AbortSignal,
  onMissing: (node: { role: AttentionRole; address: string }, err: RpcError) => void,
): Promise<AttentionSurvey[]> {
  const out = await Promise.all(
    nodes.map(async (n) => {
      try {
        const { value, seconds } = await timed(() => client(n.address).info({}, { deadline: timeoutMs, signal }));
        return { ...n, info: value, rttS: seconds };
      } catch (err) {
        onMissing(n, RpcError.from(err));
        return undefined;
      }
    }),
  );
  return out.filter((s): s is AttentionSurvey => s !== undefined);
}

const link = (rttS: number): LinkSpec => ({ bandwidth: ASSUMED_LINK_BYTES_PER_S, sustainedFraction: 1, rttS });

/** The cost model's figures of a surveyed gpu-node (measured, or the stated assumptions). */
export function gpuSpecOf(s: GpuSurvey, i: number): GpuSpec {
  const g = s.profile?.figures.case === "gpu" ? s.profile.figures.value : undefined;
  const measured = g !== undefined && g.flops > 0 && g.weightBytesPerSecond > 0;
  return {
    kind: "gpu",
    id: `gpu@${s.address}`,
    pool: `gpu#${i}`,
    pricePerHour: s.pricePerHour,
    flops: measured ? g.flops : 1e12,
    flopsEfficiency: 1,
    memoryBandwidth: measured ? g.weightBytesPerSecond : 1e11,
    bandwidthEfficiency: 1,
    memoryBytes: g && g.deviceMemoryBytes > 0n ? Number(g.deviceMemoryBytes) : 1e15,
    pcieBandwidth: 0,
    hostMemoryBytes: 0,
    link: link(s.rttS),
    layerOverheadS: measured ? g.layerOverheadSeconds : 0,
    // The measured MatMul curve (weight bytes/s at each sampled batch) in
    // place of the roofline, as the bench's local figures use it.
    ...(measured && g.dense.length > 0
      ? {
          denseCurve: g.dense.map((d) => ({
            batch: d.batch,
            weightBytesPerS: (d.k * d.n * (g.weightElementBytes || 4)) / d.seconds,
          })),
        }
      : {}),
  };
}

/** The cost model's figures of a surveyed attention node; capacity is what is free now. */
export function attentionSpecOf(s: AttentionSurvey): AttentionSpec {
  const { info } = s;
  const p = info.profile?.figures;
  const advertised = info.readBytesPerSecond > 0 ? info.readBytesPerSecond : ASSUMED_READ_BYTES_PER_S;
  let readBandwidth = advertised;
  let flops = ASSUMED_ATTENTION_FLOPS;
  let unitOverheadS = 0;
  let appendSyncS = 0;
  if (p?.case === "memory") {
    if (p.value.kernelKvBytesPerSecond > 0) readBandwidth = p.value.kernelKvBytesPerSecond;
    if (p.value.kernelFlops > 0) flops = p.value.kernelFlops;
    unitOverheadS = p.value.itemOverheadSeconds;
  } else if (p?.case === "storage") {
    const disk = p.value.readBytesPerSecond > 0 ? p.value.readBytesPerSecond : advertised;
    readBandwidth = p.value.kernelKvBytesPerSecond > 0 ? Math.min(disk, p.value.kernelKvBytesPerSecond) : disk;
    if (p.value.kernelFlops > 0) flops = p.value.kernelFlops;
    unitOverheadS = p.value.itemOverheadSeconds;
    appendSyncS = p.value.syncSeconds;
  }
  return {
    kind: s.role,
    id: `${s.role}@${s.address}`,
    pool: `${s.role}@${s.address}`,
    pricePerHour: info.pricePerHour,
    readBandwidth,
    writeBandwidth: readBandwidth,
    bandwidthEfficiency: 1,
    capacityBytes: Math.max(0, Number(info.capacityBytes) - Number(info.usedBytes)),
    flops,
    flopsEfficiency: 1,
    link: link(s.rttS),
    unitOverheadS,
    appendSyncS,
  };
}

/** Bytes per weight element a gpu-node's profile reports (4 when unknown: f32 on the CPU provider). */
const weightBytesOf = (gpus: readonly GpuSurvey[]) => {
  const g = gpus[0]?.profile?.figures;
  return g?.case === "gpu" && g.value.weightElementBytes > 0 ? g.value.weightElementBytes : 4;
};

/** The job's workload as the planner sees it. */
export interface JobWorkload {
  /** Running batch (sequences). */
  batch: number;
  /** Longest prompt, tokens. */
  promptTokens: number;
  /** Most tokens a sequence generates. */
  outputTokens: number;
}

const workloadOf = (w: JobWorkload, gpus: readonly GpuSurvey[]): Workload => ({
  batch: w.batch,
  promptTokens: Math.max(1, w.promptTokens),
  outputTokens: Math.max(1, w.outputTokens),
  weightBytes: weightBytesOf(gpus),
  kvBytes: KV_BYTES,
  wireBytes: WIRE_BYTES,
});

/**
 * Layer ranges of the pipeline: the planner's split ({@link stageLayers},
 * in proportion to each gpu-node's measured speed, under its memory) when
 * every gpu-node has a profile, else an even split.
 */
export function planStages(shape: ModelShape, gpus: readonly GpuSurvey[], w: JobWorkload): LayerRange[] {
  const even = splitLayers(shape.nLayers, gpus.length);
  if (gpus.length <= 1 || gpus.some((g) => g.profile?.figures.case !== "gpu")) return even;
  const counts = stageLayers(shape, gpus.map(gpuSpecOf), workloadOf(w, gpus), "nodes");
  if (!counts) return even;
  let start = 0;
  return counts.map((n) => ({ start, end: (start += n) }));
}

/** A plan for the KV of one role and what placement takes from it. */
export interface KvPlan {
  result: PlanResult;
  /** Units (KV-head groups of sequences) per attention node address, when a plan fits. */
  shares: Map<string, number> | undefined;
}

/**
 * Plans the KV cache of a job's sequences on the attention nodes surveyed
 * (one role's), with the pipeline fixed: the planner's best plan at the
 * job's batch and KV-head groups.
 * @throws RangeError when `attention` is empty.
 */
export function planKv(
  shape: ModelShape,
  gpus: readonly GpuSurvey[],
  attention: readonly AttentionSurvey[],
  w: JobWorkload,
  kvHeadGroups: number,
): KvPlan {
  const gpuSpecs = gpus.map(gpuSpecOf);
  const result = plan(
    shape,
    {
      pools: [
        ...gpuSpecs.map((g) => ({ name: g.pool, kind: "gpu" as const, nodes: [g] })),
        ...attention.map((a) => {
          const spec = attentionSpecOf(a);
          return { name: spec.pool, kind: spec.kind, nodes: [spec] };
        }),
      ],
    },
    {
      maxBatch: Math.max(1, w.batch),
      promptTokens: Math.max(1, w.promptTokens),
      outputTokens: Math.max(1, w.outputTokens),
      weightBytes: weightBytesOf(gpus),
      kvBytes: KV_BYTES,
      wireBytes: WIRE_BYTES,
      microBatches: [1],
      headGroups: [kvHeadGroups],
      useAllGpus: true,
      fixedBatch: true,
      baselines: false,
      runnersUp: 3,
    },
  );
  const kv = result.best?.placement.kv;
  const shares =
    kv?.mode === "nodes"
      ? new Map(kv.shares.map((s) => [s.node.id.slice(s.node.id.indexOf("@") + 1), s.units]))
      : undefined;
  return { result, shares };
}

/** What a JobPlan says besides the plan itself. */
export interface JobPlanContext {
  revision: number;
  reason: string;
  movedSequences: number;
  stages: readonly { address: string; range: LayerRange }[];
  kvHeadGroups: number;
  batch: number;
}

/**
 * The JobPlan message of `kv` (undefined: nothing to plan, `why` says
 * what, e.g. no node of the role is up).
 */
export function jobPlanMessage(kv: KvPlan | undefined, c: JobPlanContext, why = ""): JobPlan {
  const base = {
    revision: c.revision,
    reason: c.reason,
    movedSequences: c.movedSequences,
    stages: c.stages.map((s) => ({ address: s.address, layerStart: s.range.start, layerEnd: s.range.end })),
    kvHeadGroups: c.kvHeadGroups,
    batch: c.batch,
    runnersUp: kv?.result.runnersUp.map((p) => p.summary) ?? [],
  };
  const best = kv?.result.best;
  if (!kv) return create(JobPlanSchema, { ...base, summary: why });
  if (!best) {
    return create(JobPlanSchema, {
      ...base,
      summary: `no plan fits (${kv.result.infeasible ?? "no candidate"}): sequences placed by load`,
      bindingConstraint: kv.result.infeasible ?? "",
    });
  }
  const shares = best.placement.kv.mode === "nodes" ? best.placement.kv.shares : [];
  return create(JobPlanSchema, {
    ...base,
    summary: best.summary,
    bindingConstraint: kv.result.bindingConstraint,
    kvShares: shares
      .filter((s) => s.units > 0)
      .map((s) => ({ address: s.node.id.slice(s.node.id.indexOf("@") + 1), role: s.node.kind, units: s.units })),
    predictedStepSeconds: best.prediction.decodeStepS,
    predictedTokensPerSecond: best.prediction.tokensPerSecond,
    predictedDecodeTokensPerSecond: best.prediction.decodeTokensPerSecond,
    pricePerHour: best.prediction.pricePerHour,
    predictedDollarsPerMillionTokens: best.prediction.dollarsPerMillionTokens,
  });
}

/** A JobPlan as one log line. */
export function describeJobPlan(p: JobPlan): string {
  const shares = p.kvShares.map((s) => `${s.role}@${s.address}×${s.units}`).join(" ");
  const pred =
    p.predictedStepSeconds > 0
      ? `; predicted ${(p.predictedStepSeconds * 1e3).toFixed(1)} ms/step, ${p.predictedTokensPerSecond.toFixed(1)} tok/s, $${p.pricePerHour.toFixed(2)}/h`
      : "";
  return `plan ${p.revision} (${p.reason}): ${p.summary}${shares ? `; KV shares ${shares}` : ""}${pred}; binding: ${p.bindingConstraint || "none"}`;
}
