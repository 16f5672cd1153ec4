/**
 * The throughput-per-dollar planner: enumerates placements of a model on a
 * cluster (which gpu-nodes and layer ranges, where the KV cache lives, batch
 * size, micro-batches) and picks the one with the most output tokens/s per
 * $/h that fits every node's capacity and an optional per-token latency
 * bound, as predicted by {@link predict}. The search is exhaustive over a
 * small grid (counts per pool, powers of two for batch, m ∈ {1, 2, 4},
 * KV-head groups dividing n_kv_heads), with layer ranges and KV shares set
 * greedily — see {@link splitLayers} and {@link assignKv}.
 */
import type { ModelShape, NodeRole } from "@tessera/core";
import {
  DEFAULT_ELEMENT_BYTES,
  GPU_MEMORY_USABLE,
  PREFILL_CHUNK_TOKENS,
  classifierS,
  denseLayerS,
  gpuAttentionLayerS,
  kvBytesPerPosition,
  layerParams,
  predict,
  unitKvBytes,
  type AttentionSpec,
  type GpuSpec,
  type KvShare,
  type Placement,
  type Prediction,
  type Workload,
} from "./cost-model.js";

/** A pool of identical nodes as the planner sees it: `nodes` are its members. */
export interface PoolSpec {
  name: string;
  kind: NodeRole;
  nodes: GpuSpec[] | AttentionSpec[];
}

/** A cluster to plan on. */
export interface ClusterSpec {
  pools: PoolSpec[];
}

/** What to plan for. */
export interface PlanRequest {
  /** Most sequences run at once (the planner picks the running batch ≤ this). */
  maxBatch: number;
  promptTokens: number;
  outputTokens: number;
  /** Per-token latency bound in seconds (decode step time), if any. */
  latencyS?: number;
  /** Element sizes; bf16 weights/KV and f16 wire by default. */
  weightBytes?: number;
  kvBytes?: number;
  wireBytes?: number;
  /** Micro-batch counts to try (default [1, 2, 4]). */
  microBatches?: number[];
  /**
   * What tokens/s means in the objective: "job" (default) counts prefill and
   * decode of the batch; "decode" counts decode alone, as when prefill runs
   * on other machines (prefill/decode disaggregation, as Lamina measures).
   */
  objective?: "job" | "decode";
  /** Runner-up plans to return (default 5). */
  runnersUp?: number;
  /**
   * Constraints of a running cluster (the coordinator's per-job plan):
   * KV-head group counts to try (default the divisors 1, 2, 4, 8 of
   * n_kv_heads), every gpu-node used as a pipeline stage in the given order
   * (default: any subset), the batch fixed at `maxBatch` (default: powers of
   * two up to it), and no baselines. Where the KV cache lives is not a
   * choice: only on memory- and storage-nodes ({@link RUNNABLE_KV_MODES}).
   */
  headGroups?: number[];
  useAllGpus?: boolean;
  fixedBatch?: boolean;
  baselines?: boolean;
}

/**
 * Where Tessera's runtime can hold the KV cache: on attention nodes
 * (memory- and storage-nodes) only — a gpu-node runs the dense layers and
 * keeps no KV. The best plan and the runners-up use these; KV in GPU or
 * host memory ("gpu", "host") is modelled for the baselines alone, which
 * compare against systems that run it.
 */
export const RUNNABLE_KV_MODES: readonly Placement["kv"]["mode"][] = Object.freeze(["nodes"]);

/** A plan: a placement, its workload and its prediction. */
export interface Plan {
  /** One line, e.g. "2×h100 [0-40,40-80] + KV on 3 memory (g=2), batch 64, m=2". */
  summary: string;
  placement: Placement;
  workload: Workload;
  prediction: Prediction;
  /** tokens/s (of the request's objective) per $/h. */
  tokensPerSecondPerDollarHour: number;
}

/** A baseline on the chosen plan's budget. */
export interface Baseline {
  /**
   * Comparisons Tessera does not run (KV in GPU or host memory):
   * "gpu-only" and "gpu+host-offload": on the plan's $/h budget;
   * "gpu-only-any-budget": as many of the part as helps (up to the larger of
   * the budget's count and the cluster's), compared per $ without the budget
   * cap (a budget can buy too few GPUs to hold the weights and a useful batch).
   */
  name: "gpu-only" | "gpu+host-offload" | "gpu-only-any-budget";
  description: string;
  /** The best baseline plan, or undefined when nothing fits the budget. */
  plan?: Plan;
  /** Why no plan fits, when `plan` is undefined. */
  infeasible?: string;
  /** Chosen plan's tokens/s per $/h over the baseline's. */
  ratio?: number;
}

/** The planner's answer. */
export interface PlanResult {
  best?: Plan;
  /** Why nothing fits, when `best` is undefined (the most common violation). */
  infeasible?: string;
  /** What stops a better plan: the violation of the best rejected plan better than `best`, or "none". */
  bindingConstraint: string;
  runnersUp: Plan[];
  baselines: Baseline[];
  /** Placements evaluated. */
  considered: number;
}

const pow2UpTo = (n: number) => {
  const out: number[] = [];
  for (let v = 1; v < n; v *= 2) out.push(v);
  out.push(n);
  return out;
};

/** Counts of a pool to try: 0..count when count ≤ 16, else 0 and powers of two up to count. */
function countsOf(count: number, min: number): number[] {
  const all = count <= 16 ? Array.from({ length: count + 1 }, (_, i) => i) : [0, ...pow2UpTo(count)];
  return all.filter((c) => c >= min);
}

/** Cartesian product of per-pool counts. */
function product(lists: number[][]): number[][] {
  let out: number[][] = [[]];
  for (const l of lists) out = out.flatMap((prefix) => l.map((v) => [...prefix, v]));
  return out;
}

/**
 * Splits `nLayers` layers over gpu-nodes in proportion to their speed (the
 * inverse of their per-layer decode time `layerS[i]`), by largest remainder,
 * then moves layers off nodes whose memory (fixed bytes + layers ·
 * `layerBytes`) exceeds `capacity[i]`, each to the node with room whose
 * resulting time n·layerS is least. Returns layer counts per node (each ≥ 1),
 * or undefined when the layers do not fit or a node would get none.
 */
export function splitLayers(
  nLayers: number,
  layerS: number[],
  layerBytes: number,
  fixedBytes: number[],
  capacity: number[],
): number[] | undefined {
  const k = layerS.length;
  const speed = layerS.map((t) => 1 / t);
  const total = speed.reduce((a, v) => a + v, 0);
  const exact = speed.map((v) => (nLayers * v) / total);
  const n = exact.map(Math.floor);
  let left = nLayers - n.reduce((a, v) => a + v, 0);
  const order = exact.map((e, i) => [e - Math.floor(e), i] as const).sort((x, y) => y[0] - x[0]);
  for (const [, i] of order) {
    if (left-- <= 0) break;
    n[i] = n[i]! + 1;
  }
  const fits = (i: number, count: number) => fixedBytes[i]! + count * layerBytes <= capacity[i]!;
  for (let guard = 0; guard < nLayers * k; guard++) {
    const over = n.findIndex((c, i) => !fits(i, c));
    if (over < 0) break;
    let to = -1;
    for (let j = 0; j < k; j++)
      if (j !== over && fits(j, n[j]! + 1) && (to < 0 || (n[j]! + 1) * layerS[j]! < (n[to]! + 1) * layerS[to]!)) to = j;
    if (to < 0) return undefined;
    n[over] = n[over]! - 1;
    n[to] = n[to]! + 1;
  }
  if (n.some((c, i) => c < 1 || !fits(i, c))) return undefined;
  return n;
}

/**
 * Spreads `batch` sequences × `headGroups` KV-head groups over attention
 * nodes: each sequence's groups go to distinct nodes, each group to the node
 * where (units + 1) / effective read bandwidth is least among those with room
 * for `unitBytes` more. Returns the shares (nodes given no unit included with
 * 0), or undefined when the units do not fit.
 */
export function assignKv(
  nodes: AttentionSpec[],
  batch: number,
  headGroups: number,
  unitBytes: number,
): KvShare[] | undefined {
  if (headGroups > nodes.length) return undefined;
  const units = nodes.map(() => 0);
  const rate = nodes.map((a) => a.readBandwidth * a.bandwidthEfficiency);
  for (let seq = 0; seq < batch; seq++) {
    const used = new Set<number>();
    for (let grp = 0; grp < headGroups; grp++) {
      let best = -1;
      for (let i = 0; i < nodes.length; i++) {
        if (used.has(i) || (units[i]! + 1) * unitBytes > nodes[i]!.capacityBytes) continue;
        if (best < 0 || (units[i]! + 1) / rate[i]! < (units[best]! + 1) / rate[best]!) best = i;
      }
      if (best < 0) return undefined;
      used.add(best);
      units[best] = units[best]! + 1;
    }
  }
  return nodes.map((node, i) => ({ node, units: units[i]! }));
}

function describe(p: Placement, batch: number): string {
  const gpus = p.stages.map((s) => `${s.node.id}[${s.layerStart}-${s.layerEnd})`).join(" ");
  let kv: string;
  if (p.kv.mode === "gpu") kv = "KV in GPU memory";
  else if (p.kv.mode === "host") kv = "KV in host memory over PCIe";
  else kv = `KV on ${p.kv.shares.map((s) => `${s.node.id}×${s.units}`).join(" ")} (head groups ${p.kv.headGroups})`;
  return `${gpus}; ${kv}; batch ${batch}, micro-batches ${p.microBatches}`;
}

interface Search {
  gpuPools: PoolSpec[];
  attnPools: PoolSpec[];
  kvModes: ("gpu" | "host" | "nodes")[];
}

/** Evaluates every candidate of `search`; calls `visit` with each prediction-bearing plan. */
function enumerate(shape: ModelShape, req: PlanRequest, search: Search, visit: (p: Plan) => void): number {
  const el = {
    weightBytes: req.weightBytes ?? DEFAULT_ELEMENT_BYTES.weightBytes,
    kvBytes: req.kvBytes ?? DEFAULT_ELEMENT_BYTES.kvBytes,
    wireBytes: req.wireBytes ?? DEFAULT_ELEMENT_BYTES.wireBytes,
  };
  const ctxMax = req.promptTokens + req.outputTokens;
  let considered = 0;
  const gpuCounts = req.useAllGpus
    ? [search.gpuPools.map((p) => p.nodes.length)]
    : product(search.gpuPools.map((p) => countsOf(p.nodes.length, 0))).filter((c) => c.reduce((a, v) => a + v, 0) >= 1);
  const attnCounts = product(search.attnPools.map((p) => countsOf(p.nodes.length, 0))).filter(
    (c) => c.reduce((a, v) => a + v, 0) >= 1,
  );
  const groupsList = (req.headGroups ?? [1, 2, 4, 8]).filter((g) => shape.nKvHeads % g === 0);
  for (const gc of gpuCounts) {
    const gpus = search.gpuPools.flatMap((p, i) => (p.nodes as GpuSpec[]).slice(0, gc[i]));
    if (gpus.length > shape.nLayers) continue;
    for (const batch of req.fixedBatch ? [req.maxBatch] : pow2UpTo(req.maxBatch)) {
      const workload: Workload = {
        batch,
        promptTokens: req.promptTokens,
        outputTokens: req.outputTokens,
        ...el,
      };
      for (const mode of search.kvModes) {
        const counts = stageLayers(shape, gpus, workload, mode);
        if (counts === undefined) continue;
        let start = 0;
        const stages = gpus.map((node, i) => {
          const s = { node, layerStart: start, layerEnd: start + counts[i]! };
          start += counts[i]!;
          return s;
        });
        const kvChoices: Placement["kv"][] = [];
        if (mode === "gpu" || mode === "host") kvChoices.push({ mode });
        else {
          for (const ac of attnCounts) {
            const nodes = search.attnPools.flatMap((p, i) => (p.nodes as AttentionSpec[]).slice(0, ac[i]));
            for (const g of groupsList) {
              if (g > nodes.length) continue;
              const shares = assignKv(nodes, batch, g, unitKvBytes(shape, ctxMax, el.kvBytes, g));
              // Unused nodes make a dominated candidate (same plan, higher price): skip.
              if (shares === undefined) {
                const even = evenShares(nodes, batch, g);
                if (even) kvChoices.push({ mode: "nodes", headGroups: g, shares: even });
                continue;
              }
              if (shares.some((s) => s.units === 0)) continue;
              kvChoices.push({ mode: "nodes", headGroups: g, shares });
            }
          }
        }
        for (const kv of kvChoices) {
          for (const m of req.microBatches ?? [1, 2, 4]) {
            if (m > batch) continue;
            const placement: Placement = { stages, kv, microBatches: m };
            const prediction = predict(shape, workload, placement);
            considered++;
            const tps = req.objective === "decode" ? prediction.decodeTokensPerSecond : prediction.tokensPerSecond;
            visit({
              summary: describe(placement, batch),
              placement,
              workload,
              prediction,
              tokensPerSecondPerDollarHour: tps / prediction.pricePerHour,
            });
          }
        }
      }
    }
  }
  return considered;
}

/**
 * Layer counts of each gpu-node of a pipeline (in order) for `workload`
 * with the KV cache in `mode`: {@link splitLayers} in proportion to each
 * node's decode time per layer at the workload's batch (dense, plus
 * attention when the KV stays on the GPU; the last stage's classifier
 * spread over its layers), under each node's usable memory (weights, KV in
 * GPU memory, activations of a 4096-token prefill chunk, logits). When the
 * memory does not fit, the proportional split without repair (so its
 * violation can be reported); undefined when a node would get no layer.
 * The coordinator loads its pipeline with this split, so a live job's
 * stages are the ones its plan predicts.
 */
export function stageLayers(
  shape: ModelShape,
  gpus: readonly GpuSpec[],
  workload: Workload,
  mode: "gpu" | "host" | "nodes",
): number[] | undefined {
  const { batch, promptTokens } = workload;
  const ctxMax = promptTokens + workload.outputTokens;
  const ctxMean = promptTokens + workload.outputTokens / 2;
  const kvPos = kvBytesPerPosition(shape, workload.kvBytes);
  const layerS = gpus.map(
    (g) =>
      denseLayerS(shape, g, batch, workload.weightBytes) +
      (mode === "nodes" ? 0 : gpuAttentionLayerS(shape, g, batch, ctxMean, workload.kvBytes)),
  );
  const activations =
    Math.max(batch, Math.min(batch * promptTokens, PREFILL_CHUNK_TOKENS)) *
      (4 * shape.dim + 2 * shape.hiddenDim) *
      workload.wireBytes +
    batch * shape.vocabSize * 4;
  const fixed = gpus.map(
    (_, i) =>
      activations +
      ((i === 0 ? shape.vocabSize * shape.dim : 0) +
        (i === gpus.length - 1 ? shape.vocabSize * shape.dim + shape.dim : 0)) *
        workload.weightBytes,
  );
  const layerBytes = layerParams(shape) * workload.weightBytes + (mode === "gpu" ? batch * ctxMax * kvPos : 0);
  // The last stage also runs the classifier: count it as time when splitting.
  const last = gpus.length - 1;
  layerS[last] = layerS[last]! + classifierS(shape, gpus[last]!, batch, workload.weightBytes) / shape.nLayers;
  const split = splitLayers(
    shape.nLayers,
    layerS,
    layerBytes,
    fixed,
    gpus.map((g) => g.memoryBytes * GPU_MEMORY_USABLE),
  );
  const counts = split ?? proportional(shape.nLayers, layerS);
  return counts.some((c) => c < 1) ? undefined : counts;
}

function proportional(nLayers: number, layerS: number[]): number[] {
  const speed = layerS.map((t) => 1 / t);
  const total = speed.reduce((a, v) => a + v, 0);
  const n = speed.map((v) => Math.floor((nLayers * v) / total));
  n[0] = n[0]! + nLayers - n.reduce((a, v) => a + v, 0);
  return n;
}

/** Units spread round-robin ignoring capacity (to report how an over-full placement overflows). */
function evenShares(nodes: AttentionSpec[], batch: number, g: number): KvShare[] | undefined {
  if (g > nodes.length) return undefined;
  const units = nodes.map(() => 0);
  for (let u = 0; u < batch * g; u++) units[u % nodes.length]! += 1;
  if (units.some((u) => u === 0)) return undefined;
  return nodes.map((node, i) => ({ node, units: units[i]! }));
}

function violationsOf(p: Plan, latencyS: number | undefined): string[] {
  const v = [...p.prediction.violations];
  if (latencyS !== undefined && p.prediction.perTokenLatencyS > latencyS)
    v.push(
      `latency bound: ${(p.prediction.perTokenLatencyS * 1e3).toFixed(1)} ms per token > ${(latencyS * 1e3).toFixed(1)} ms`,
    );
  return v;
}

/** Searches `search` and keeps the best feasible plans and the best infeasible one per violation kind. */
function best(shape: ModelShape, req: PlanRequest, search: Search) {
  const feasible: Plan[] = [];
  const rejected: { plan: Plan; reason: string }[] = [];
  let bestRejected: { plan: Plan; reason: string } | undefined;
  const reasons = new Map<string, number>();
  const considered = enumerate(shape, req, search, (p) => {
    const v = violationsOf(p, req.latencyS);
    if (v.length === 0) {
      feasible.push(p);
      return;
    }
    const reason = v[0]!;
    const kind = reason.replace(/:.*/, "");
    reasons.set(kind, (reasons.get(kind) ?? 0) + 1);
    const shown = v.length > 2 ? [...v.slice(0, 2), `and ${v.length - 2} more`] : v;
    const r = { plan: p, reason: shown.join("; ") };
    rejected.push(r);
    if (bestRejected === undefined || p.tokensPerSecondPerDollarHour > bestRejected.plan.tokensPerSecondPerDollarHour)
      bestRejected = r;
  });
  feasible.sort(
    (a, b) =>
      b.tokensPerSecondPerDollarHour - a.tokensPerSecondPerDollarHour ||
      b.prediction.tokensPerSecond - a.prediction.tokensPerSecond,
  );
  const common = [...reasons.entries()].sort((a, b) => b[1] - a[1])[0];
  return { feasible, rejected, bestRejected, considered, commonReason: common?.[0] };
}

/**
 * Names what stops a better plan than `top`: a latency bound that rejected a
 * better plan; else why the next batch size on the same nodes is rejected;
 * else the workload's batch limit; else "none". Always adds the term that sets
 * the decode step (cycle latency or the busiest station).
 */
function bindingOf(top: Plan, rejected: { plan: Plan; reason: string }[], req: PlanRequest): string {
  const step = `decode step bound by ${top.prediction.bottleneck}`;
  const better = rejected.filter((r) => r.plan.tokensPerSecondPerDollarHour > top.tokensPerSecondPerDollarHour);
  const latency = better.find((r) => r.reason.startsWith("latency bound"));
  if (latency) return `${latency.reason} (would allow: ${latency.plan.summary}); ${step}`;
  const b = top.workload.batch;
  if (b >= req.maxBatch) return `workload batch limit (${req.maxBatch} sequences); ${step}`;
  const key = (p: Plan) =>
    [
      p.placement.stages.map((s) => s.node.id).join(","),
      p.placement.kv.mode,
      p.placement.kv.mode === "nodes" ? p.placement.kv.shares.map((s) => s.node.id).join(",") : "",
      p.placement.kv.mode === "nodes" ? p.placement.kv.headGroups : 0,
      p.placement.microBatches,
    ].join("|");
  const k = key(top);
  const next = rejected
    .filter((r) => r.plan.workload.batch > b && key(r.plan) === k)
    .sort((x, y) => x.plan.workload.batch - y.plan.workload.batch)[0];
  if (next) return `batch ${next.plan.workload.batch} on the same nodes: ${next.reason}; ${step}`;
  return `none (larger batches fit but predict fewer tokens/s per $); ${step}`;
}

/** A pool of `count` copies of gpu node `g` (ids "<pool>#i"). */
function gpuPoolOf(name: string, g: GpuSpec, count: number): PoolSpec {
  return {
    name,
    kind: "gpu",
    nodes: Array.from({ length: count }, (_, i) => ({ ...g, id: `${name}#${i}`, pool: name })),
  };
}

/**
 * Plans `shape` on `cluster` for `req`: the feasible plan with the most
 * tokens/s per $/h (ties: more tokens/s), its binding constraint, runner-up
 * plans with distinct placements, and the GPU-only and GPU + host-offload
 * (FlexGen-style) baselines on the chosen plan's $/h budget with the GPU part
 * of its first stage. Plans keep the KV cache only where the runtime can
 * ({@link RUNNABLE_KV_MODES}).
 * @throws RangeError when the cluster has no gpu-node or no memory- or
 *   storage-node, or the request is not positive integers.
 */
export function plan(shape: ModelShape, cluster: ClusterSpec, req: PlanRequest): PlanResult {
  for (const [k, v] of Object.entries({
    maxBatch: req.maxBatch,
    promptTokens: req.promptTokens,
    outputTokens: req.outputTokens,
  }))
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${k} must be a positive integer, got ${v}`);
  const gpuPools = cluster.pools.filter((p) => p.kind === "gpu" && p.nodes.length > 0);
  const attnPools = cluster.pools.filter((p) => p.kind !== "gpu" && p.nodes.length > 0);
  if (gpuPools.length === 0) throw new RangeError("the cluster has no gpu-node: nothing can run the dense layers");
  if (attnPools.length === 0) {
    throw new RangeError(
      "the cluster has no memory- or storage-node to hold the KV cache (Tessera keeps no KV on gpu-nodes)",
    );
  }
  const search: Search = { gpuPools, attnPools, kvModes: [...RUNNABLE_KV_MODES] };
  const { feasible, rejected, bestRejected, considered, commonReason } = best(shape, req, search);
  const top = feasible[0];
  const runnersUp: Plan[] = [];
  const seen = new Set<string>(top ? [top.summary] : []);
  for (const p of feasible.slice(1)) {
    if (runnersUp.length >= (req.runnersUp ?? 5)) break;
    if (seen.has(p.summary)) continue;
    seen.add(p.summary);
    runnersUp.push(p);
  }
  const binding = top ? bindingOf(top, rejected, req) : (bestRejected?.reason ?? "no candidate");
  const baselines: Baseline[] = [];
  if (top && req.baselines !== false) {
    const budget = top.prediction.pricePerHour;
    const part = top.placement.stages[0]!.node;
    const count = Math.max(1, Math.floor(budget / part.pricePerHour + 1e-9));
    const clusterCount = gpuPools.find((p) => p.name === part.pool)?.nodes.length ?? count;
    const anyCount = Math.max(count, clusterCount);
    for (const [name, mode, n] of [
      ["gpu-only", "gpu", count],
      ["gpu+host-offload", "host", count],
      ["gpu-only-any-budget", "gpu", anyCount],
    ] as const) {
      const pool = gpuPoolOf(`${part.pool}-baseline`, part, n);
      const r = best(shape, { ...req, runnersUp: 0 }, { gpuPools: [pool], attnPools: [], kvModes: [mode] });
      const bp = r.feasible[0];
      const budgetText = name === "gpu-only-any-budget" ? "any budget" : `$${budget.toFixed(2)}/h budget`;
      const description = `up to ${n} × ${part.pool} (${budgetText}), ${mode === "gpu" ? "KV in GPU memory" : "KV in host memory read over PCIe (FlexGen-style)"}`;
      baselines.push(
        bp
          ? { name, description, plan: bp, ratio: top.tokensPerSecondPerDollarHour / bp.tokensPerSecondPerDollarHour }
          : { name, description, infeasible: r.bestRejected?.reason ?? r.commonReason ?? "no candidate" },
      );
    }
  }
  return {
    ...(top ? { best: top } : { infeasible: bestRejected?.reason ?? commonReason ?? "no candidate" }),
    bindingConstraint: binding,
    runnersUp,
    baselines,
    considered,
  };
}
