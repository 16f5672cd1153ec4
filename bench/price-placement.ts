/**
 * `node --import tsx bench/main.ts --only price` (issue 4, "Done when" item
 * 2): with two memory-nodes of different configured prices, capacities and
 * speeds, a job's sequences land where the planner says, and the placement
 * the planner prefers costs less per measured token than the alternatives.
 *
 * Cluster: one gpu-node and two memory-nodes, each a child process of this
 * one on loopback gRPC (their own event loops, threads and heaps, as on
 * separate machines; only the cores and the memory bus are shared), and one
 * in-process coordinator per placement (its work is light: tokenising,
 * sampling, routing). The nodes are started through their packages, not
 * `tessera node`, because the CLI has no flag for a memory-node's attention
 * threads:
 * - "cheap": {@link CHEAP} — $1/h, one attention thread, room for 4 of the
 *   16 sequences;
 * - "dear": {@link DEAR} — $1.3/h, two attention threads, room for all;
 * - the gpu-node: {@link GPU_PRICE_PER_HOUR} (an assumed price).
 * Every node advertises a profile (Info.profile) made from one measurement
 * of this machine ({@link profileMachine}, as bench/plan-vs-measured.ts),
 * as `--profile <file>` would: the memory-nodes the attention kernel's KV
 * bytes/s and FLOP/s with their own number of threads. So the coordinator's
 * planner and this bench's cost model see the same figures.
 *
 * Why these figures: on two shared cores a second attention thread adds
 * little (decode attention is memory-bound, and the cores share one memory
 * bus: the profile's two-thread kernel rate is within noise of the
 * one-thread rate), so per KV byte read "cheap" is the cheaper node. "dear"
 * should still win per token because it holds the whole batch: "cheap"
 * alone runs 4 sequences a step, paying the gpu-node and the fixed costs of
 * a step for a quarter of the tokens; and adding "cheap" beside "dear" costs
 * $1/h more for a quarter of the attention. The cheaper-per-token answer is
 * then not "the node with the lower price".
 *
 * Workload: {@link NARROW_KV64K} (64 KiB of f32 KV per position), 16
 * prompts of {@link PROMPT_TOKENS} tokens, greedy, {@link DECODE_TOKENS}
 * tokens each: attention over ~400 positions is a large part of a decode
 * step.
 *
 * Placements, each run by a coordinator given only those memory-nodes:
 * both nodes (16 sequences: the planner chooses), "dear" only (16), "cheap"
 * only (4, what it holds). For each: sequences per node (Result.kv_node),
 * the coordinator's plan (Summary.plan: predicted tokens/s and $ per million
 * tokens of the whole job, prefill included), the cost model's decode
 * prediction for the placement measured (packages/scheduler's predict() on
 * {@link localNodeSpecs}), and measured figures: decode tokens/s (the
 * coordinator's decode_tokens_per_second) and $ per million decode tokens =
 * (gpu price + prices of the memory-nodes holding sequences) / 3600 ÷
 * tokens/s × 1e6; the same end to end (completion tokens ÷ the job's wall
 * time).
 *
 * The planner's choice is the coordinator's plan of the both-nodes run; when
 * the coordinator sends none, the bench runs packages/scheduler's plan() on
 * the same figures the way the coordinator does (fixed batch, KV on the
 * attention nodes, one KV-head group, one micro-batch) and says so.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "@tessera/cli";
import { createCoordinator } from "@tessera/coordinator";
import {
  KvPlacement,
  NodeProfileSchema,
  create,
  toBinary,
  type JobPlan,
  type NodeProfile,
  type Summary,
} from "@tessera/proto";
import {
  localNodeSpecs,
  plan,
  predict,
  type AttentionSpec,
  type MachineProfile,
  type Plan,
  type Prediction,
} from "@tessera/scheduler";
import { generate } from "@tessera/testing";
import {
  LLAMA_TOKENIZER,
  NARROW_KV64K,
  benchTokenizer,
  ensureModel,
  progress,
  promptsOfLength,
  type BenchOptions,
} from "./common.js";
import { LOCAL_ELEMENT_BYTES, profileMachine } from "./plan-vs-measured.js";
import type { NodeRole } from "@tessera/core";

/** Assumed price of the gpu-node, $/h (a CPU server running the dense layers). */
export const GPU_PRICE_PER_HOUR = 0.5;

/** A memory-node of the bench: what it costs, how many attention threads it runs, how many sequences it holds. */
export interface PricedMemoryNode {
  name: string;
  /** $/h, advertised by Info. */
  pricePerHour: number;
  /** The memory-node's attentionThreads. */
  attentionThreads: number;
  /** Sequences of the workload its KV capacity holds (capacity: this many and a half sequences' KV). */
  sequences: number;
}

/** Lower $/h, one attention thread, room for a quarter of the batch. */
export const CHEAP: PricedMemoryNode = { name: "cheap", pricePerHour: 1, attentionThreads: 1, sequences: 4 };
/** 30% more $/h, two attention threads, room for the whole batch. */
export const DEAR: PricedMemoryNode = { name: "dear", pricePerHour: 1.3, attentionThreads: 2, sequences: 64 };

/** Sequences of the job. */
export const BATCH = 16;
/** Prompt tokens of every sequence (BOS included); half with --quick. */
export const PROMPT_TOKENS = 384;
/** Tokens generated per sequence (greedy). */
export const DECODE_TOKENS = 24;

/** One measured placement. */
export interface PlacementRun {
  /** e.g. "both given", "dear only". */
  label: string;
  /** Memory-nodes the coordinator was given, by name. */
  given: string[];
  sequences: number;
  /** Sequences (KV-head group shards) per memory-node name, from Result.kv_node. */
  perNode: Map<string, number>;
  /** The coordinator's plan (Summary.plan: the last one), when it sent one. */
  plan?: JobPlan;
  /** Every plan the job streamed (GenerateEvent.plan), in order: more than one when it re-planned. */
  plans: JobPlan[];
  /** The coordinator's log lines of this run about lost nodes, waiting and moved sequences. */
  incidents: string[];
  /** The cost model's decode prediction for the placement measured (this machine's profile). */
  prediction: Prediction;
  /** Decode tokens/s (coordinator summary). */
  tokensPerSecond: number;
  /** gpu-node + memory-nodes holding sequences, $/h. */
  pricePerHour: number;
  /** Measured $ per million decode tokens. */
  dollarsPerMillionTokens: number;
  /** Completion tokens ÷ the job's wall seconds (prefill included). */
  endToEndTokensPerSecond: number;
  /** $ per million completion tokens at {@link endToEndTokensPerSecond}. */
  endToEndDollarsPerMillionTokens: number;
  summary: Summary;
}

/** Whether a run's sequences per node equal its plan's kv_shares. */
export interface PlanCheck {
  ok: boolean;
  expected: string;
  measured: string;
}

/** What {@link runPricePlacement} measured. */
export interface PricePlacementResult {
  profile: MachineProfile;
  /** The memory-nodes as the cost model sees them, by name. */
  specs: Map<string, AttentionSpec>;
  /** Where the planner's choice came from. */
  chosenBy: "coordinator plan" | "bench plan()";
  /** The planner's choice: memory-node names it uses, sorted. */
  chosen: string[];
  /** The bench's own plan() on the same figures, best first (the fallback choice; for information). */
  benchPlans: Plan[];
  runs: PlacementRun[];
  /** Per run label, for runs whose coordinator sent a plan. */
  planChecks: Map<string, PlanCheck>;
  promptTokens: number;
  notes: string[];
}

/** A node child process. */
interface NodeProcess {
  address: string;
  child: ChildProcess;
}

// The child: creates the node from its package (the built dist, as `tessera
// node` runs it) with the options and profile it is given, reports its
// address over IPC and closes on SIGTERM or when this process goes away.
const CHILD_SOURCE = `
const { NodeProfileSchema, fromBinary } = await import("@tessera/proto");
const { role, options, profile } = JSON.parse(process.env.TESSERA_BENCH_NODE);
if (profile) options.profile = fromBinary(NodeProfileSchema, Buffer.from(profile, "base64"));
const node = role === "gpu"
  ? (await import("@tessera/gpu-node")).createGpuNode(options)
  : (await import("@tessera/memory-node")).createMemoryNode(options);
await node.start();
process.send({ type: "ready", address: node.address });
let closing;
const stop = () => (closing ??= node.close().finally(() => process.exit(0)));
process.on("SIGTERM", stop);
process.on("disconnect", stop);
`;

/** Starts a gpu- or memory-node with `options` and `profile` in a child process (run from the repository root). */
function startNode(
  role: Exclude<NodeRole, "storage">,
  name: string,
  options: Record<string, unknown>,
  profile: NodeProfile,
  tmp: string,
  o: BenchOptions,
): Promise<NodeProcess> {
  const spec = { role, options, profile: Buffer.from(toBinary(NodeProfileSchema, profile)).toString("base64") };
  const child = spawn(process.execPath, ["--input-type=module", "-e", CHILD_SOURCE], {
    cwd: repoRoot,
    stdio: ["ignore", "ignore", "pipe", "ipc"],
    // onnxruntime leaves a file per process in the temp folder: keep them in ours.
    env: { ...process.env, TMPDIR: tmp, TESSERA_BENCH_NODE: JSON.stringify(spec) },
  });
  let tail = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    tail = (tail + chunk).slice(-8192);
    if (o.verbose) process.stderr.write(chunk.replace(/^(?=.)/gm, `[${name}] `));
  });
  child.once("exit", (code, signal) => {
    if (code !== 0 && signal !== "SIGTERM")
      progress(`price: ${name} (${role}-node) exited (${signal ?? code}):\n${tail}`);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${name} (${role}-node) did not become ready in 60 s:\n${tail}`));
    }, 60_000);
    child.on("message", (m: { type?: string; address?: string }) => {
      if (m?.type !== "ready" || !m.address) return;
      clearTimeout(timer);
      resolve({ address: m.address, child });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} (${role}-node) exited (${signal ?? code}) before it was ready:\n${tail}`));
    });
  });
}

/** SIGTERM, then SIGKILL after 5 s. */
async function stopNode(n: NodeProcess): Promise<void> {
  const { child } = n;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const t = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(t);
}

/** KV bytes per position on the memory-nodes: n_layers × 2 (K, V) × n_kv_heads × head_dim × 4 (f32). */
function kvBytesPerPosition(): number {
  const s = NARROW_KV64K.shape;
  return s.nLayers * 2 * s.nKvHeads * s.headDim * 4;
}

/** Units (sequence × KV-head group) per memory-node name of a plan's kv_shares. */
function planUnits(p: JobPlan, nameOf: (address: string) => string): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of p.kvShares) if (s.units > 0) out.set(nameOf(s.address), (out.get(nameOf(s.address)) ?? 0) + s.units);
  return out;
}

const fmtCounts = (m: Map<string, number>) =>
  [...m.entries()]
    .sort()
    .map(([k, v]) => `${k}×${v}`)
    .join(" ") || "none";

/**
 * Whether the sequences per node of a run equal the plan's kv_shares: exactly
 * when the plan's batch is the job's, else in the plan's proportions (each
 * running batch placed alike).
 */
function checkPlan(units: Map<string, number>, perNode: Map<string, number>): PlanCheck {
  const total = [...units.values()].reduce((a, v) => a + v, 0);
  const measured = [...perNode.values()].reduce((a, v) => a + v, 0);
  const expected = new Map([...units].map(([k, v]) => [k, total > 0 ? (v * measured) / total : NaN]));
  const names = new Set([...expected.keys(), ...perNode.keys()]);
  const ok = total > 0 && [...names].every((k) => expected.get(k) === perNode.get(k));
  return { ok, expected: fmtCounts(expected), measured: fmtCounts(perNode) };
}

/**
 * Runs the bench: profiles this machine (a few seconds), starts the nodes
 * with profiles made from it, runs the job on each placement (the fastest
 * of `reps` runs each by decode tokens/s, placements alternating) and
 * returns the figures.
 * @throws Error when a node fails to start or a sequence fails.
 */
export async function runPricePlacement(o: BenchOptions, reps = 1): Promise<PricePlacementResult> {
  const model = await ensureModel(NARROW_KV64K, o.cacheDir);
  const shape = NARROW_KV64K.shape;
  const notes: string[] = [];
  progress("price: profiling this machine");
  const profile = await profileMachine();
  const local = localNodeSpecs(profile, { pricePerHour: GPU_PRICE_PER_HOUR });
  const promptTokens = o.quick ? PROMPT_TOKENS / 2 : PROMPT_TOKENS;
  const decodeTokens = DECODE_TOKENS;
  // The memory-node reserves prompt + max tokens - 1 positions per sequence; the planner counts prompt + output.
  const seqBytes = (promptTokens + decodeTokens) * kvBytesPerPosition();
  const nodes = [CHEAP, DEAR];
  const capacity = (n: PricedMemoryNode) => Math.floor((n.sequences + 0.5) * seqBytes);
  const specs = new Map(
    nodes.map((n) => {
      const one = n.attentionThreads === 1;
      const spec: AttentionSpec = {
        ...local.memory,
        id: n.name,
        pool: n.name,
        pricePerHour: n.pricePerHour,
        readBandwidth: one ? profile.attention.kvBytesPerSOneThread : profile.attention.kvBytesPerS,
        flops: one ? profile.attention.flopsPerSOneThread : profile.attention.flopsPerS,
        capacityBytes: capacity(n),
      };
      return [n.name, spec];
    }),
  );
  const common = { cores: availableParallelism(), memoryBytes: BigInt(profile.memoryBytes), profileSeconds: 0 };
  const gpuProfile = create(NodeProfileSchema, {
    ...common,
    role: "gpu",
    pricePerHour: GPU_PRICE_PER_HOUR,
    figures: {
      case: "gpu",
      value: {
        executionProvider: "cpu",
        dense: profile.dense,
        weightElementBytes: profile.denseWeightBytes,
        flops: local.gpu.flops,
        weightBytesPerSecond: local.gpu.memoryBandwidth,
        layerOverheadSeconds: local.gpu.layerOverheadS ?? 0,
        deviceMemoryBytes: BigInt(profile.memoryBytes),
      },
    },
  });
  const memoryProfile = (n: PricedMemoryNode) => {
    const s = specs.get(n.name)!;
    return create(NodeProfileSchema, {
      ...common,
      role: "memory",
      pricePerHour: n.pricePerHour,
      figures: {
        case: "memory",
        value: {
          readBytesPerSecond: profile.memoryReadBytesPerS,
          kernelKvBytesPerSecond: s.readBandwidth,
          kernelFlops: s.flops,
          itemOverheadSeconds: s.unitOverheadS ?? 0,
          attentionThreads: n.attentionThreads,
          capacityBytes: BigInt(s.capacityBytes),
        },
      },
    });
  };

  // The planner on the same figures, as the coordinator asks it (planKv in services/coordinator/src/job-plan.ts).
  const answer = plan(
    shape,
    {
      pools: [
        { name: "gpu", kind: "gpu", nodes: [local.gpu] },
        ...nodes.map((n) => ({ name: n.name, kind: "memory" as const, nodes: [specs.get(n.name)!] })),
      ],
    },
    {
      maxBatch: BATCH,
      promptTokens,
      outputTokens: decodeTokens,
      ...LOCAL_ELEMENT_BYTES,
      microBatches: [1],
      headGroups: [1],
      useAllGpus: true,
      fixedBatch: true,
      baselines: false,
      runnersUp: 3,
    },
  );
  const benchPlans = [...(answer.best ? [answer.best] : []), ...answer.runnersUp];

  const dir = await mkdtemp(join(tmpdir(), "tessera-price-"));
  const started: NodeProcess[] = [];
  const coordinators: { close(): Promise<void> }[] = [];
  try {
    progress(`price: starting the gpu-node and memory-nodes ${nodes.map((n) => n.name).join(", ")}`);
    const gpu = await startNode("gpu", "gpu", { port: 0, pricePerHour: GPU_PRICE_PER_HOUR }, gpuProfile, dir, o);
    started.push(gpu);
    const memory = new Map<string, NodeProcess>();
    for (const n of nodes) {
      const options = {
        port: 0,
        pricePerHour: n.pricePerHour,
        attentionThreads: n.attentionThreads,
        capacityBytes: capacity(n),
        readBytesPerSecond: specs.get(n.name)!.readBandwidth,
      };
      const m = await startNode("memory", n.name, options, memoryProfile(n), dir, o);
      started.push(m);
      memory.set(n.name, m);
    }
    const nameOf = (address: string) => {
      const bare = address.replace(/^(memory|storage)@/, "");
      for (const [name, m] of memory) if (m.address === bare) return name;
      return bare;
    };

    // Coordinator log lines that explain a slow or re-planned run.
    const incidents: string[] = [];
    const incident = /lost|back|wait|mov|no answer|no Info|retry|fail/i;
    const coordinatorOf = async (names: string[], kvPlacement: "plan" | "cheapest-first") => {
      const c = createCoordinator({
        gpuNodes: [gpu.address],
        memoryNodes: names.map((n) => memory.get(n)!.address),
        kvPlacement,
        modelPath: model,
        tokenizerPath: LLAMA_TOKENIZER,
        maxBatchSequences: BATCH,
        log: (line) => {
          if (incident.test(line)) incidents.push(line);
          if (o.verbose) process.stderr.write(`[coordinator ${names.join("+")}] ${line}\n`);
        },
      });
      coordinators.push(c);
      await c.start();
      return c.address;
    };

    const tokenizer = await benchTokenizer();
    const texts = promptsOfLength(tokenizer, BATCH, promptTokens);
    // The planner's placement (both nodes given, sequences follow the plan),
    // the cheapest-first rule on the same nodes (the cheapest node per KV
    // byte fills first: the runner-up plan's split), and each node alone.
    const placements = [
      { label: "both given", given: nodes.map((n) => n.name), sequences: BATCH, address: "", rule: "plan" as const },
      {
        label: "both given, cheapest-first",
        given: nodes.map((n) => n.name),
        sequences: BATCH,
        address: "",
        rule: "cheapest-first" as const,
      },
      ...nodes.map((n) => ({
        label: `${n.name} only`,
        given: [n.name],
        sequences: Math.min(BATCH, n.sequences),
        address: "",
        rule: "plan" as const,
      })),
    ];
    for (const p of placements) p.address = await coordinatorOf(p.given, p.rule);

    // Warm-up, one full-length prompt per placement: the gpu-node loads the model once (every
    // coordinator asks for the same range) and meets the prefill's shapes; each memory-node's
    // kernels tier up and its attention workers start (they start on the first call with enough
    // KV to split, which a prompt of this length has).
    progress("price: loading the model and warming up every placement");
    for (const p of placements)
      await generate(p.address, {
        prompts: [{ id: "warm", prompt: texts[0]! }],
        sampling: { maxTokens: 2 },
        kv: KvPlacement.MEMORY,
      });

    const runs = new Map<string, PlacementRun>();
    for (let rep = 0; rep < reps; rep++) {
      for (const p of placements) {
        const plans: JobPlan[] = [];
        incidents.length = 0;
        const res = await generate(
          p.address,
          {
            prompts: texts.slice(0, p.sequences).map((prompt, i) => ({ id: `p${i}`, prompt })),
            sampling: { temperature: 0, maxTokens: decodeTokens },
            kv: KvPlacement.MEMORY,
          },
          (e) => {
            if (e.event.case === "plan") plans.push(e.event.value);
          },
        );
        const summary = res.summary;
        if (!summary) throw new Error(`price bench: ${p.label}: the coordinator sent no summary`);
        const failed = [...res.results.values()].find((r) => r.finishReason === "error");
        if (failed) throw new Error(`price bench: ${p.label}: ${failed.id}: ${failed.error}`);
        const perNode = new Map<string, number>();
        for (const r of res.results.values())
          for (const shard of r.kvNode.split(",").filter(Boolean))
            perNode.set(nameOf(shard), (perNode.get(nameOf(shard)) ?? 0) + 1);
        const used = [...perNode.keys()].sort();
        const pricePerHour = GPU_PRICE_PER_HOUR + used.reduce((a, n) => a + specs.get(n)!.pricePerHour, 0);
        const tokensPerSecond = summary.decodeTokensPerSecond;
        const completion = Number(summary.completionTokens);
        const prediction = predict(
          shape,
          { batch: p.sequences, promptTokens, outputTokens: decodeTokens, ...LOCAL_ELEMENT_BYTES },
          {
            stages: [{ node: local.gpu, layerStart: 0, layerEnd: shape.nLayers }],
            kv: {
              mode: "nodes",
              headGroups: summary.plan?.kvHeadGroups || 1,
              shares: used.map((n) => ({ node: specs.get(n)!, units: perNode.get(n)! })),
            },
            microBatches: 1,
          },
        );
        const run: PlacementRun = {
          label: p.label,
          given: p.given,
          sequences: p.sequences,
          perNode,
          ...(summary.plan ? { plan: summary.plan } : {}),
          plans,
          incidents: [...incidents],
          prediction,
          tokensPerSecond,
          pricePerHour,
          dollarsPerMillionTokens: (pricePerHour / 3600 / tokensPerSecond) * 1e6,
          endToEndTokensPerSecond: completion / summary.wallSeconds,
          endToEndDollarsPerMillionTokens: ((pricePerHour / 3600) * summary.wallSeconds * 1e6) / completion,
          summary,
        };
        progress(
          `price: ${p.label}: ${fmtCounts(perNode)}; ${tokensPerSecond.toFixed(2)} tok/s decode, ` +
            `$${run.dollarsPerMillionTokens.toFixed(2)}/Mtok at $${pricePerHour.toFixed(2)}/h; ` +
            (summary.plan ? `plan: ${summary.plan.summary}` : "no plan sent"),
        );
        const prev = runs.get(p.label);
        if (!prev || tokensPerSecond > prev.tokensPerSecond) runs.set(p.label, run);
      }
    }

    const planChecks = new Map<string, PlanCheck>();
    // The cheapest-first run does not follow the plan by design: nothing to check.
    for (const r of runs.values())
      if (r.plan && !r.label.endsWith("cheapest-first"))
        planChecks.set(r.label, checkPlan(planUnits(r.plan, nameOf), r.perNode));
    const bothRun = runs.get("both given")!;
    let chosen: string[];
    let chosenBy: PricePlacementResult["chosenBy"];
    if (bothRun.plan && bothRun.plan.kvShares.length > 0) {
      chosen = [...planUnits(bothRun.plan, nameOf).keys()].sort();
      chosenBy = "coordinator plan";
    } else {
      const kv = benchPlans[0]?.placement.kv;
      chosen = kv?.mode === "nodes" ? kv.shares.filter((s) => s.units > 0).map((s) => s.node.id) : [];
      chosen.sort();
      chosenBy = "bench plan()";
      notes.push(
        `the coordinator sent no plan with KV shares (${bothRun.plan ? `plan: "${bothRun.plan.summary}"` : "Summary.plan unset"}): ` +
          "the planner's choice is the bench's own plan() on the same figures",
      );
    }
    for (const r of runs.values())
      if (r.label === "both given") r.label = `both given → ${[...r.perNode.keys()].sort().join(" + ")}`;
    return { profile, specs, chosenBy, chosen, benchPlans, runs: [...runs.values()], planChecks, promptTokens, notes };
  } finally {
    await Promise.all(coordinators.map((c) => c.close()));
    await Promise.all(started.map(stopNode));
    await rm(dir, { recursive: true, force: true });
  }
}

const money = (x: number) => (Number.isFinite(x) && x > 0 ? `$${x.toFixed(2)}` : "—");
const rate = (x: number) => (Number.isFinite(x) && x > 0 ? x.toFixed(1) : "—");

/** Prints the node figures, the plans and the Markdown table of {@link runPricePlacement}. */
export function printPricePlacement(r: PricePlacementResult): void {
  console.log("\nprice placement (bench/price-placement.ts):");
  console.log(
    `- workload: ${NARROW_KV64K.name}, ${BATCH} sequences × ${r.promptTokens} prompt tokens, ${DECODE_TOKENS} ` +
      `tokens generated each, KV on memory-nodes; gpu-node $${GPU_PRICE_PER_HOUR.toFixed(2)}/h (assumed)`,
  );
  for (const n of [CHEAP, DEAR]) {
    const s = r.specs.get(n.name)!;
    console.log(
      `- ${n.name}: $${n.pricePerHour.toFixed(2)}/h, ${n.attentionThreads} attention thread(s): kernel ` +
        `${(s.readBandwidth / 1e9).toFixed(1)} GB/s of KV (measured here), capacity ${(s.capacityBytes / 2 ** 20).toFixed(0)} MiB ` +
        `(${n.sequences} sequences); $ per TB of KV read ${((n.pricePerHour / 3600 / s.readBandwidth) * 1e12).toFixed(4)}`,
    );
  }
  const plans = r.benchPlans.map((p) => {
    const pr = p.prediction;
    return `  ${p.summary}: ${pr.tokensPerSecond.toFixed(1)} tok/s (job), $${pr.dollarsPerMillionTokens.toFixed(2)}/Mtok`;
  });
  console.log(`- bench plan() as the coordinator asks it, best first:\n${plans.join("\n")}`);
  const key = (x: PlacementRun) => [...x.perNode.keys()].sort().join("+");
  const chosenRun = r.runs.find((x) => key(x) === r.chosen.join("+"));
  const head = [
    "placement",
    "seqs per node",
    "plan tok/s (job)",
    "plan $/Mtok (job)",
    "model decode tok/s",
    "model $/Mtok",
    "measured decode tok/s",
    "$/h",
    "measured $/Mtok",
    "meas ÷ model tok/s",
    "$/Mtok ÷ chosen",
    "e2e tok/s",
    "e2e $/Mtok",
  ];
  const lines = r.runs.map((x) => [
    `${x.label}${chosenRun === x ? " (chosen)" : ""}`,
    fmtCounts(x.perNode),
    x.plan ? rate(x.plan.predictedTokensPerSecond) : "—",
    x.plan ? money(x.plan.predictedDollarsPerMillionTokens) : "—",
    rate(x.prediction.decodeTokensPerSecond),
    money(x.prediction.dollarsPerMillionDecodeTokens),
    rate(x.tokensPerSecond),
    money(x.pricePerHour),
    money(x.dollarsPerMillionTokens),
    (x.tokensPerSecond / x.prediction.decodeTokensPerSecond).toFixed(2),
    chosenRun ? (x.dollarsPerMillionTokens / chosenRun.dollarsPerMillionTokens).toFixed(2) : "—",
    rate(x.endToEndTokensPerSecond),
    money(x.endToEndDollarsPerMillionTokens),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  console.log();
  console.log(fmt(head));
  console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
  for (const l of lines) console.log(fmt(l));
  console.log();
  for (const x of r.runs) {
    if (x.plan) console.log(`- ${x.label}: plan "${x.plan.summary}"; binding: ${x.plan.bindingConstraint || "none"}`);
    if (x.plans.length > 1)
      console.log(
        `  re-planned: ${x.plans.map((p) => `${p.revision} (${p.reason}${p.movedSequences ? `, ${p.movedSequences} moved` : ""})`).join("; ")}`,
      );
    for (const line of x.incidents.slice(0, 6)) console.log(`  coordinator: ${line}`);
    if (x.incidents.length > 6) console.log(`  coordinator: ... ${x.incidents.length - 6} more such lines`);
  }
  for (const [label, m] of r.planChecks)
    console.log(
      `- ${label}: sequences per node ${m.ok ? "match" : "DO NOT match"} the coordinator's plan ` +
        `(plan ${m.expected}, measured ${m.measured})`,
    );
  if (r.planChecks.size === 0) console.log("- no coordinator plan to check the sequences per node against");
  for (const n of r.notes) console.log(`- ${n}`);
  if (!chosenRun) {
    console.log(`- the planner's choice (${r.chosen.join(" + ")}, by ${r.chosenBy}) was not among the measured runs`);
    return;
  }
  // Runs that placed the sequences as the chosen one did are repeats of it, not alternatives.
  const others = r.runs.filter((x) => x !== chosenRun && key(x) !== key(chosenRun));
  const repeats = r.runs.filter((x) => x !== chosenRun && key(x) === key(chosenRun));
  for (const x of repeats)
    console.log(
      `- ${x.label} placed the sequences as the planner's choice did (${fmtCounts(x.perNode)}): ` +
        `$${x.dollarsPerMillionTokens.toFixed(2)}/Mtok, a repeat (run-to-run spread), not an alternative`,
    );
  const won = others.every((x) => chosenRun.dollarsPerMillionTokens < x.dollarsPerMillionTokens);
  console.log(
    `- planner's choice (${r.chosenBy}): ${r.chosen.join(" + ")}: measured $${chosenRun.dollarsPerMillionTokens.toFixed(2)} ` +
      `per million decode tokens against ${others.map((x) => `${x.label} $${x.dollarsPerMillionTokens.toFixed(2)}`).join(", ")}: ` +
      (won ? "the planner's choice WON" : "the planner's choice did NOT win"),
  );
  const e2e = others.every((x) => chosenRun.endToEndDollarsPerMillionTokens < x.endToEndDollarsPerMillionTokens);
  console.log(
    `- end to end (completion tokens ÷ job wall time, prefill included; repeats of the chosen placement left out): the planner's choice is ` +
      `${e2e ? "also the cheapest" : "NOT the cheapest"} ` +
      `(${r.runs.map((x) => `${x.label} $${x.endToEndDollarsPerMillionTokens.toFixed(2)}`).join(", ")})`,
  );
}
