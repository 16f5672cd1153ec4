/**
 * `npm run bench:plan` (issue 4, "Done when" item 1): the cost model's
 * predicted decode step time against the one measured on the local cluster
 * (coordinator, gpu-node, memory-node, storage-node as child processes on
 * loopback gRPC), for several workloads: batch 1 / 16 / 64 at a short
 * context (16 prompt tokens) on the dim-2048 model (LLAMA_2048), batch 1 /
 * 16 at a long context (512 prompt tokens, where attention outweighs dense
 * compute) on the narrow model (NARROW_KV64K: the same 64 KiB of KV per
 * position, narrow dense layers so prefill takes seconds, not minutes), KV
 * on the memory-node and on the storage-node; 8 decode steps each (--steps).
 *
 * The prediction is `predict()` of packages/scheduler fed with the node
 * figures {@link localNodeSpecs} derives from one profile of this machine,
 * measured here in a few seconds before any cluster starts
 * ({@link profileMachine}): dense MatMul FLOP/s and weight bytes/s of
 * onnxruntime at batch 1, 16, 64, and the fixed cost of a layer's graphs; the attention kernel's KV bytes/s; disk
 * and page-cache read bandwidth; loopback gRPC RTT and bandwidth. One
 * profile serves every workload: nothing is fitted per workload.
 *
 * Measured: the coordinator's summary (`decode_breakdown`: decode step =
 * coordinator round trip, the gpu-node's dense time and the attention
 * nodes' compute time, per step); "rest" is step − dense − attention
 * (wire, serialisation, the coordinator's sampling), against the predicted
 * step − dense − attention (transfers and RTTs).
 *
 * Run: `npm run bench:plan` or `node --import tsx bench/main.ts --only plan`
 * (`--quick`: fewer steps and workloads; `--small`: the dim-256 model
 * instead of dim 2048 for the short contexts).
 */
import { availableParallelism, tmpdir, totalmem } from "node:os";
import * as ort from "onnxruntime-node";
import { measureReadBandwidth, synthesizeWeights, type ModelShape } from "@tessera/core";
import { OnnxGraphBuilder, POST, PRE, buildPostAttentionGraph, buildPreAttentionGraph } from "@tessera/gpu-node";
import { KvPlacement, type Summary } from "@tessera/proto";
import {
  localNodeSpecs,
  measureAttentionKernel,
  measureDiskRead,
  measureRpcLoopback,
  predict,
  profileDense,
  type AttentionSpec,
  type LocalNodeSpecs,
  type MachineProfile,
  type Prediction,
} from "@tessera/scheduler";
import { generate } from "@tessera/testing";
import {
  LLAMA_2048,
  NARROW_KV64K,
  benchTokenizer,
  ensureModel,
  progress,
  startBenchCluster,
  type BenchModel,
  type BenchOptions,
} from "./common.js";

/** Bytes per element on the local cluster: f32 weights (onnxruntime CPU EP), f32 KV, f16 activations on the wire. */
export const LOCAL_ELEMENT_BYTES = { weightBytes: 4, kvBytes: 4, wireBytes: 2 } as const;

/**
 * Seconds of one onnxruntime run of x [batch, k] × W [k, n] (f32, W an
 * initializer), best of 3 after a warm-up, with the gpu-node's session
 * options (all intra-op threads, no spinning).
 */
async function timeOrtMatMul(batch: number, k: number, n: number): Promise<number> {
  const g = new OnnxGraphBuilder("matmul");
  const x = g.input("x", "float32", ["B", k]);
  const w = new Float32Array(k * n);
  for (let i = 0; i < w.length; i++) w[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  g.op("MatMul", [x, g.f32("w", w, [k, n])], {}, "y");
  g.output("y", "float32", ["B", n]);
  const session = await ort.InferenceSession.create(g.toBytes(), {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  });
  try {
    const feeds = { x: new ort.Tensor("float32", new Float32Array(batch * k).fill(0.01), [batch, k]) };
    await session.run(feeds);
    let best = Infinity;
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      await session.run(feeds);
      best = Math.min(best, (performance.now() - t0) / 1000);
    }
    return best;
  } finally {
    await session.release();
  }
}

/**
 * Seconds of one layer's graphs (the gpu-node's "pre" and "post" graphs,
 * llama-graphs.ts) at batch 1 on a tiny shape (dim 64, hidden 64, 2 heads
 * of 32), best of 20 after a warm-up: the fixed cost of a layer (graph
 * launch, the dozens of small ops around the MatMuls) with almost no
 * MatMul work in it.
 */
async function timeTinyLayer(): Promise<number> {
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
  const opts = {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all" as const,
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  };
  const pre = await ort.InferenceSession.create(buildPreAttentionGraph(shape, w, 0).toBytes(), opts);
  const post = await ort.InferenceSession.create(buildPostAttentionGraph(shape, w, 0).toBytes(), opts);
  try {
    const x = new ort.Tensor("float32", new Float32Array(64).fill(0.1), [1, 64]);
    const pos = new ort.Tensor("int64", new BigInt64Array([3n]), [1]);
    const o = new ort.Tensor("float32", new Float32Array(64).fill(0.1), [1, 64]);
    const layer = async () => {
      await pre.run({ [PRE.x]: x, [PRE.positions]: pos });
      await post.run({ [POST.x]: x, [POST.o]: o });
    };
    await layer();
    let best = Infinity;
    for (let r = 0; r < 20; r++) {
      const t0 = performance.now();
      await layer();
      best = Math.min(best, (performance.now() - t0) / 1000);
    }
    return best;
  } finally {
    await pre.release();
    await post.release();
  }
}

/**
 * This machine's profile (a few seconds): onnxruntime MatMul (2048 × 5632,
 * f32: 46 MB of weights) at batch 1, 16, 64; one thread's memory read
 * bandwidth; the wasm attention kernel's roofline (KV bytes/s, FLOP/s and
 * fixed cost per item); disk read under the OS temp folder (256 MiB, pages
 * dropped, then cached); loopback gRPC.
 */
export async function profileMachine(): Promise<MachineProfile> {
  const t0 = performance.now();
  const dense = await profileDense(timeOrtMatMul);
  const denseLayerOverheadS = await timeTinyLayer();
  const memoryReadBytesPerS = measureReadBandwidth(128 * 2 ** 20, 4);
  const att = await measureAttentionKernel();
  const disk = await measureDiskRead(tmpdir());
  const rpc = await measureRpcLoopback();
  progress(`profile measured in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return {
    cores: availableParallelism(),
    dense,
    denseWeightBytes: 4,
    denseLayerOverheadS,
    memoryReadBytesPerS,
    attention: att,
    disk,
    rpc,
    memoryBytes: totalmem(),
  };
}

/** One workload of the comparison. */
export interface PlanWorkload {
  model: BenchModel;
  batch: number;
  /** Approximate prompt tokens (the measured mean is used for the prediction). */
  promptTokens: number;
  kv: "memory" | "storage";
}

/** Predicted and measured figures of one workload, seconds per decode step. */
export interface PlanRow {
  workload: PlanWorkload;
  /** Mean prompt tokens (BOS included) of the batch, as the coordinator tokenised them. */
  promptTokens: number;
  steps: number;
  prediction: Prediction;
  predicted: { step: number; dense: number; attention: number; rest: number };
  measured: { step: number; dense: number; attention: number; rest: number };
  /** Mean prefill seconds per sequence (from the result timings), for information. */
  prefillS: number;
}

const WORDS = (
  "the cat sat on a warm mat while rain fell over quiet hills and old trees " +
  "spoke of river stone light morning bread garden window letter music"
).split(" ");

/** `count` distinct prompts of about `tokens` tokens: words from a fixed list, trimmed by the tokenizer's count. */
async function prompts(count: number, tokens: number): Promise<string[]> {
  const tok = await benchTokenizer();
  return Array.from({ length: count }, (_, i) => {
    const words: string[] = [];
    for (let j = i; words.length < tokens - 1; j++) words.push(WORDS[(j * 7 + i) % WORDS.length]!);
    while (words.length > 1 && tok.encode(words.join(" "), { bos: true, eos: false }).length > tokens) words.pop();
    return words.join(" ");
  });
}

/** Predicted decode step of `w` with every layer on the gpu-node and the batch's KV on `node`, one micro-batch. */
export function predictLocal(
  shape: ModelShape,
  specs: LocalNodeSpecs,
  node: AttentionSpec,
  batch: number,
  promptTokens: number,
  steps: number,
): Prediction {
  return predict(
    shape,
    { batch, promptTokens, outputTokens: steps, ...LOCAL_ELEMENT_BYTES },
    {
      stages: [{ node: specs.gpu, layerStart: 0, layerEnd: shape.nLayers }],
      kv: { mode: "nodes", headGroups: 1, shares: [{ node, units: batch }] },
      microBatches: 1,
    },
  );
}

/** Runs every workload of `model` on one local cluster, fastest of `reps` runs each. */
async function measureModel(
  model: BenchModel,
  workloads: PlanWorkload[],
  specs: LocalNodeSpecs,
  o: BenchOptions,
  reps: number,
): Promise<PlanRow[]> {
  const path = await ensureModel(model, o.cacheDir);
  progress(`plan: starting the local cluster on ${model.name}`);
  const cluster = await startBenchCluster(path, {}, o);
  const rows: PlanRow[] = [];
  try {
    await generate(cluster.address, {
      prompts: [{ id: "warm", prompt: "Hi" }],
      sampling: { maxTokens: 2 },
      kv: KvPlacement.MEMORY,
    });
    for (const w of workloads) {
      const texts = await prompts(w.batch, w.promptTokens);
      let best: { summary: Summary; prompt: number; prefill: number } | undefined;
      for (let r = 0; r < reps; r++) {
        const res = await generate(cluster.address, {
          prompts: texts.map((prompt, i) => ({ id: `p${i}`, prompt, maxTokens: o.steps + 1 })),
          sampling: { temperature: 0, maxTokens: o.steps + 1 },
          kv: w.kv === "memory" ? KvPlacement.MEMORY : KvPlacement.STORAGE,
        });
        const summary = res.summary;
        const results = [...res.results.values()];
        const failed = results.find((x) => x.finishReason === "error");
        if (failed) throw new Error(`plan bench: ${model.name} batch ${w.batch} ${w.kv}: ${failed.error}`);
        if (!summary?.decodeBreakdown || summary.decodeBreakdown.steps === 0)
          throw new Error(`plan bench: ${model.name} batch ${w.batch}: no decode breakdown in the summary`);
        const prompt = results.reduce((a, x) => a + x.promptTokenIds.length, 0) / results.length;
        const prefill = results.reduce((a, x) => a + (x.timings?.prefillSeconds ?? 0), 0) / results.length;
        const b = summary.decodeBreakdown;
        if (
          !best ||
          b.stepSeconds / b.steps < best.summary.decodeBreakdown!.stepSeconds / best.summary.decodeBreakdown!.steps
        )
          best = { summary, prompt, prefill };
      }
      const b = best!.summary.decodeBreakdown!;
      const steps = b.steps;
      const step = b.stepSeconds / steps;
      const dense = b.denseSeconds / steps;
      const attention = b.attentionComputeSeconds / steps;
      const node = w.kv === "memory" ? specs.memory : specs.storage;
      const p = predictLocal(model.shape, specs, node, w.batch, best!.prompt, o.steps);
      const pd = p.perStage[0]!.denseS;
      const pa = p.perAttentionNode[0]!.attentionS;
      const row: PlanRow = {
        workload: w,
        promptTokens: best!.prompt,
        steps,
        prediction: p,
        predicted: { step: p.decodeStepS, dense: pd, attention: pa, rest: p.decodeStepS - pd - pa },
        measured: { step, dense, attention, rest: step - dense - attention },
        prefillS: best!.prefill,
      };
      progress(`plan: ${label(row)}: predicted ${ms(row.predicted.step)} ms, measured ${ms(step)} ms per step`);
      rows.push(row);
    }
  } finally {
    await cluster.stop();
  }
  return rows;
}

const ms = (s: number) => (1000 * s).toFixed(1);
const label = (r: PlanRow) =>
  `${r.workload.model.name} batch ${r.workload.batch}, ctx ${Math.round(r.promptTokens)}+${r.steps}, KV on ${r.workload.kv}`;

/** The workloads: short contexts on `short` (batch 1/16/64 memory, 16 storage), long on NARROW_KV64K (batch 1/16 memory, 16 storage). */
export function planWorkloads(short: BenchModel, quick: boolean): PlanWorkload[] {
  const longTokens = quick ? 256 : 512;
  return [
    ...(quick ? [1, 16] : [1, 16, 64]).map((batch) => ({
      model: short,
      batch,
      promptTokens: 16,
      kv: "memory" as const,
    })),
    { model: short, batch: 16, promptTokens: 16, kv: "storage" },
    { model: NARROW_KV64K, batch: 1, promptTokens: longTokens, kv: "memory" },
    { model: NARROW_KV64K, batch: 16, promptTokens: longTokens, kv: "memory" },
    { model: NARROW_KV64K, batch: 16, promptTokens: longTokens, kv: "storage" },
  ];
}

/** Profiles the machine, then measures every workload of {@link planWorkloads} and pairs it with its prediction. */
export async function runPlanVsMeasured(
  o: BenchOptions,
  short: BenchModel = LLAMA_2048,
  reps = 1,
): Promise<{ profile: MachineProfile; specs: LocalNodeSpecs; rows: PlanRow[] }> {
  progress("plan: profiling this machine");
  const profile = await profileMachine();
  const specs = localNodeSpecs(profile);
  const workloads = planWorkloads(short, o.quick);
  const rows: PlanRow[] = [];
  for (const model of [...new Set(workloads.map((w) => w.model))])
    rows.push(
      ...(await measureModel(
        model,
        workloads.filter((w) => w.model === model),
        specs,
        o,
        reps,
      )),
    );
  return { profile, specs, rows };
}

const gbs = (x: number) => `${(x / 1e9).toFixed(2)} GB/s`;

/** Prints the profile, the node figures it maps to and the Markdown table of {@link runPlanVsMeasured}. */
export function printPlanVsMeasured(r: { profile: MachineProfile; specs: LocalNodeSpecs; rows: PlanRow[] }): void {
  const p = r.profile;
  const s = r.specs;
  console.log(`\nmachine profile (${p.cores} cores, shared by every node process):`);
  for (const d of p.dense)
    console.log(
      `- onnxruntime MatMul batch ${d.batch} × [${d.k}, ${d.n}] f32: ${ms(d.seconds)} ms = ` +
        `${((2 * d.batch * d.k * d.n) / d.seconds / 1e9).toFixed(1)} GFLOP/s, ${gbs((d.k * d.n * 4) / d.seconds)} of weights`,
    );
  console.log(
    `- a layer's pre + post graphs at dim 64 (fixed cost per layer): ${(p.denseLayerOverheadS * 1e6).toFixed(0)} µs`,
  );
  console.log(
    `- memory read (1 thread, memcmp) ${gbs(p.memoryReadBytesPerS)}; attention kernel ${gbs(p.attention.kvBytesPerS)} of KV, ` +
      `${(p.attention.flopsPerS / 1e9).toFixed(1)} GFLOP/s (${p.attention.threads} threads), ` +
      `${gbs(p.attention.kvBytesPerSOneThread)}, ${(p.attention.flopsPerSOneThread / 1e9).toFixed(1)} GFLOP/s (1 thread), ` +
      `${(p.attention.itemS * 1e6).toFixed(0)} µs per item`,
  );
  console.log(
    `- disk read ${gbs(p.disk.readBytesPerS)}${p.disk.dropped ? "" : " (pages not dropped)"}, page cache ${gbs(p.disk.cachedReadBytesPerS)}, ` +
      `append + fdatasync ${(p.disk.syncS * 1e6).toFixed(0)} µs each (16 in flight); ` +
      `loopback gRPC RTT ${(p.rpc.rttS * 1e6).toFixed(0)} µs, ${gbs(p.rpc.bytesPerS)}`,
  );
  console.log(
    `- cost-model figures: gpu ${(s.gpu.flops / 1e9).toFixed(1)} GFLOP/s, weights ${gbs(s.gpu.memoryBandwidth)}, ` +
      `${ms(s.gpu.layerOverheadS ?? 0)} ms per layer; ` +
      `memory-node ${gbs(s.memory.readBandwidth)} of KV; storage-node ${gbs(s.storage.readBandwidth)} of KV (page cache, 1-thread kernel); ` +
      `links RTT ${(s.gpu.link.rttS * 1e6).toFixed(0)} µs, ${gbs(s.gpu.link.bandwidth)}\n`,
  );
  const head = [
    "workload",
    "predicted ms/step",
    "measured ms/step",
    "ratio",
    "dense pred/meas",
    "attention pred/meas",
    "rest pred/meas",
    "bottleneck",
    "within 25%",
  ];
  const lines = r.rows.map((x) => {
    const ratio = x.predicted.step / x.measured.step;
    return [
      label(x),
      ms(x.predicted.step),
      ms(x.measured.step),
      ratio.toFixed(2),
      `${ms(x.predicted.dense)} / ${ms(x.measured.dense)}`,
      `${ms(x.predicted.attention)} / ${ms(x.measured.attention)}`,
      `${ms(x.predicted.rest)} / ${ms(x.measured.rest)}`,
      x.prediction.bottleneck,
      ratio >= 0.75 && ratio <= 1.25 ? "yes" : "no",
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  console.log(fmt(head));
  console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
  for (const l of lines) console.log(fmt(l));
}
