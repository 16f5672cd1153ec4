import type { ModelShape } from "@tessera/core";
import { readModelHeader } from "@tessera/model";
import {
  SHAPES,
  loadCluster,
  namedShape,
  plan,
  type Baseline,
  type ClusterSpec,
  type Plan,
  type PlanResult,
} from "@tessera/scheduler";

/** Flags of `tessera plan`. */
export interface PlanFlags {
  cluster: string;
  model: string;
  batch: number;
  promptTokens: number;
  outputTokens: number;
  latencyMs?: number;
  objective: "job" | "decode";
  json: boolean;
}

/**
 * Resolves `--model`: a named shape (Llama-2-7B/13B/70B, case-insensitive) or
 * the path of a llama2.c checkpoint / Hugging Face folder, whose header is read.
 * @throws CheckpointError naming the file when a path is not a readable model.
 */
export async function modelShape(model: string): Promise<{ name: string; shape: ModelShape }> {
  const named = namedShape(model);
  if (named) return { name: model, shape: named.shape };
  try {
    return { name: model, shape: (await readModelHeader(model)).shape };
  } catch (err) {
    const msg = (err as Error).message;
    throw new Error(`${msg} (--model is a checkpoint path or one of ${Object.keys(SHAPES).join(", ")})`);
  }
}

const f = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : String(n));

function planRow(label: string, p: Plan, ratio?: number): string[] {
  const q = p.prediction;
  return [
    label,
    f(q.tokensPerSecond),
    f(q.decodeTokensPerSecond),
    f(q.perTokenLatencyS * 1e3),
    f(q.prefillS),
    f(q.pricePerHour, 2),
    f(q.dollarsPerMillionTokens, 2),
    f(q.dollarsPerMillionDecodeTokens, 2),
    ratio === undefined ? "" : `${f(ratio, 2)}x`,
  ];
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows
    .map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  "))
    .join("\n");
}

/** The human-readable report of a plan result. */
export function formatPlan(model: string, flags: PlanFlags, r: PlanResult): string {
  const out: string[] = [];
  out.push(
    `model ${model}; batch ≤ ${flags.batch}, prompt ${flags.promptTokens}, output ${flags.outputTokens} tokens` +
      (flags.latencyMs === undefined ? "" : `, ≤ ${flags.latencyMs} ms/token`) +
      `; objective: ${flags.objective === "decode" ? "decode tokens/s" : "job tokens/s (prefill + decode)"} per $/h` +
      `; ${r.considered} placements evaluated. Predictions of the cost model, not measurements.`,
  );
  if (!r.best) {
    out.push(`no plan fits: ${r.infeasible ?? "no candidate"}`);
    return out.join("\n") + "\n";
  }
  const b = r.best;
  out.push("", `plan: ${b.summary}`, `binding constraint: ${r.bindingConstraint}`, "");
  const header = ["", "tok/s", "decode tok/s", "ms/token", "prefill s", "$/h", "$/Mtok", "decode $/Mtok", "plan gain"];
  const rows = [header, planRow("plan", b)];
  for (const base of r.baselines) rows.push(baselineRow(base));
  out.push(table(rows), "");
  for (const base of r.baselines)
    out.push(
      `${base.name}: ${base.description}${base.plan ? ` — ${base.plan.summary}` : ` — infeasible: ${base.infeasible}`}`,
    );
  out.push("", "memory per node (used / usable):");
  for (const m of b.prediction.memory)
    out.push(
      `  ${m.id} ${m.kind}: ${f(m.usedBytes / 1e9)} / ${f(m.capacityBytes / 1e9)} GB` +
        ` (weights ${f(m.weightsBytes / 1e9)}, KV ${f(m.kvBytes / 1e9)}, activations ${f(m.activationBytes / 1e9)})`,
    );
  out.push("", "decode step, per micro-batch: busiest stations (s):");
  for (const s of [...b.prediction.stations].sort((x, y) => y.busyS - x.busyS).slice(0, 5))
    out.push(`  ${s.station}: ${s.busyS.toExponential(3)}`);
  out.push(
    `  cycle latency: ${b.prediction.cycleS.toExponential(3)}; step = max(cycle, m·busiest) = ${b.prediction.decodeStepS.toExponential(3)}`,
  );
  if (r.runnersUp.length > 0) {
    out.push("", "runners-up (tok/s per $/h, objective):");
    for (const p of r.runnersUp) out.push(`  ${f(p.tokensPerSecondPerDollarHour, 3)}  ${p.summary}`);
  }
  return out.join("\n") + "\n";
}

function baselineRow(base: Baseline): string[] {
  if (!base.plan) return [base.name, "infeasible", "", "", "", "", "", "", ""];
  // "plan gain": the plan's tokens/s per $/h over the baseline's (objective tokens/s).
  return planRow(base.name, base.plan, base.ratio);
}

/** JSON-friendly view of a plan (node specs reduced to ids). */
function planJson(p: Plan) {
  const kv = p.placement.kv;
  return {
    summary: p.summary,
    batch: p.workload.batch,
    microBatches: p.placement.microBatches,
    stages: p.placement.stages.map((s) => ({ node: s.node.id, pool: s.node.pool, layers: [s.layerStart, s.layerEnd] })),
    kv:
      kv.mode === "nodes"
        ? {
            mode: kv.mode,
            headGroups: kv.headGroups,
            shares: kv.shares.map((s) => ({ node: s.node.id, pool: s.node.pool, kind: s.node.kind, units: s.units })),
          }
        : { mode: kv.mode },
    tokensPerSecondPerDollarHour: p.tokensPerSecondPerDollarHour,
    prediction: p.prediction,
  };
}

/**
 * Loads the cluster file and the model's shape and plans the workload the
 * flags describe (what `tessera plan` and `tessera plan --apply` share).
 * @throws as {@link planCommand}.
 */
export async function planFromFlags(
  flags: PlanFlags,
): Promise<{ name: string; shape: ModelShape; cluster: ClusterSpec; result: PlanResult }> {
  const cluster = await loadCluster(flags.cluster);
  const { name, shape } = await modelShape(flags.model);
  const result = plan(shape, cluster, {
    maxBatch: flags.batch,
    promptTokens: flags.promptTokens,
    outputTokens: flags.outputTokens,
    objective: flags.objective,
    ...(flags.latencyMs === undefined ? {} : { latencyS: flags.latencyMs / 1e3 }),
  });
  return { name, shape, cluster, result };
}

/**
 * `tessera plan`: plans a model on a described cluster and prints the plan,
 * its prediction and the baselines (table, or JSON with --json).
 * @throws ClusterFileError naming the file and field of a bad cluster file;
 *   Error for a model that is neither a named shape nor a readable checkpoint.
 */
export async function planCommand(flags: PlanFlags): Promise<number> {
  const { name, shape, result: r } = await planFromFlags(flags);
  if (flags.json) {
    const json = {
      model: name,
      shape,
      workload: {
        maxBatch: flags.batch,
        promptTokens: flags.promptTokens,
        outputTokens: flags.outputTokens,
        latencyMs: flags.latencyMs ?? null,
        objective: flags.objective,
      },
      best: r.best ? planJson(r.best) : null,
      infeasible: r.infeasible ?? null,
      bindingConstraint: r.bindingConstraint,
      runnersUp: r.runnersUp.map(planJson),
      baselines: r.baselines.map((b) => ({
        name: b.name,
        description: b.description,
        plan: b.plan ? planJson(b.plan) : null,
        infeasible: b.infeasible ?? null,
        ratio: b.ratio ?? null,
      })),
      considered: r.considered,
    };
    process.stdout.write(JSON.stringify(json, null, 2) + "\n");
  } else process.stdout.write(formatPlan(name, flags, r));
  return r.best ? 0 : 2;
}
