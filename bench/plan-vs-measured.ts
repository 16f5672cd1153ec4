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
 * measured in about 15 s ({@link profileMachine}) before any cluster starts:
 * onnxruntime MatMul weight bytes/s at batch 1, 16, 64 (weights streamed
 * from memory: the cost model interpolates this curve), the fixed cost of a
 * layer's graphs when run after an idle millisecond (as between two Attend
 * round trips), the attention kernel's KV bytes/s, disk and page-cache read
 * bandwidth, loopback gRPC RTT and bandwidth, the per-logit cost of the
 * logits hand-off (protobuf + sampling); then, once, a calibration step
 * against the first bench cluster before any workload runs
 * ({@link calibrateOnCluster}): real Attend round trips of 1, 4, 16 and 64
 * items to its memory-node and storage-node, fitted to fixed costs per
 * request and per item. One profile serves every workload: nothing is
 * fitted per workload.
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
import { SPLIT_MIN_BYTES } from "@tessera/attention";
import { tensorF32, wireTensor, type ModelShape, type AttentionRole } from "@tessera/core";
import { createSampler } from "@tessera/model";
import {
  measureReadBandwidth,
  measureAttentionKernel,
  measureDiskRead,
  measureRpcLoopback,
  profileDense,
} from "@tessera/profiling";
import { LAYER_GAP_MS, createOrtMatMulTimer, timeOrtLayerOverhead } from "@tessera/gpu-node";
import {
  Attention,
  KvPlacement,
  TensorSchema,
  create,
  createClient,
  fromBinary,
  toBinary,
  type Summary,
} from "@tessera/proto";
import {
  fitAttendProbe,
  localNodeSpecs,
  predict,
  type AttendProbe,
  type AttentionSpec,
  type LocalNodeSpecs,
  type MachineProfile,
  type Prediction,
} from "@tessera/scheduler";
import { generate, openAttend } from "@tessera/testing";
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

/** Median of `xs` (the upper one of an even count). */
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** A running bench cluster. */
type LocalCluster = Awaited<ReturnType<typeof startBenchCluster>>;

/** Bytes per element on the local cluster: f32 weights (onnxruntime CPU EP), f32 KV, f16 activations on the wire. */
export const LOCAL_ELEMENT_BYTES = { weightBytes: 4, kvBytes: 4, wireBytes: 2 } as const;

/**
 * This machine's profile (about 15 s), with the gpu-node's self-profile
 * timers on its CPU provider and f32 weights: onnxruntime MatMul (2048 ×
 * 5632, f32: 46 MB of weights, 12 copies streamed from memory,
 * `createOrtMatMulTimer`) at batch 1, 16, 64; a layer's graphs after 1 ms
 * idle (`timeOrtLayerOverhead`'s default gap, the figure the gpu-node
 * advertises); the logits hand-off per logit; one thread's memory read
 * bandwidth; the wasm attention kernel's roofline (KV bytes/s, FLOP/s and
 * fixed cost per item); disk read under the OS temp folder (256 MiB, pages
 * dropped, then cached); loopback gRPC.
 */
export async function profileMachine(): Promise<MachineProfile> {
  const t0 = performance.now();
  const gpu = { executionProvider: "cpu", weightDtype: "f32" } as const;
  const matmul = createOrtMatMulTimer(gpu);
  const dense = await profileDense((batch, k, n) => matmul.time(batch, k, n)).finally(() => matmul.release());
  const denseLayerOverheadS = await timeOrtLayerOverhead(gpu, { gapMs: LAYER_GAP_MS });
  const memoryReadBytesPerS = measureReadBandwidth(128 * 2 ** 20, 4);
  const att = await measureAttentionKernel();
  const disk = await measureDiskRead(tmpdir());
  const rpc = await measureRpcLoopback();
  const sampleLogitS = timeSampleLogit();
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
    sampleLogitS,
  };
}

/**
 * Real Attend round trips to the attention node at `address` (a memory- or
 * storage-node process of the bench cluster), as the gpu-node sends them:
 * one request per layer on a long-lived Attend stream, `items` sequences of
 * one new position each, q/k/v encoded to f16 from f32 before sending, the
 * reply's o decoded to f32 (core's wireTensor / tensorF32, as the
 * gpu-node). Layout 32 heads, 8 KV heads, head_dim 64, two layers: each
 * step sends layer 0 (timed) then layer 1 (not timed: a storage-node
 * replaces a sequence's manifest after its last layer, which the cost
 * model charges per step, not per layer); item counts 1, 4, 16, 64, median
 * of `reps` steps each after one warm-up; positions grow by one per step
 * (contexts ≤ 4·(reps + 1)). Then 1 and 4 items at a long context (K/V
 * of a layer per item just over core's SPLIT_MIN_BYTES, 2 MiB, from which
 * a memory-node spreads a request over its worker threads): prefilled,
 * then `reps` decode steps each after one warm-up. Sequences are opened first and closed after.
 * @throws Error when the node fails a request (its NodeError's message).
 */
export async function probeAttend(address: string, reps = 11): Promise<AttendProbe> {
  const layout = { nLayers: 2, nHeads: 32, nKvHeads: 8, headDim: 64 };
  const counts = [1, 4, 16, 64];
  const maxItems = Math.max(...counts);
  const qRow = layout.nHeads * layout.headDim;
  const kvRow = layout.nKvHeads * layout.headDim;
  const client = createClient(Attention, address);
  const ids = Array.from({ length: maxItems }, (_, i) => `plan-probe-${process.pid}-${i}`);
  // Long sequences: K/V of one layer just over core's SPLIT_MIN_BYTES (the memory-node spreads it over workers).
  const longCounts = [1, 4];
  const longIds = Array.from({ length: 4 }, (_, i) => `plan-probe-${process.pid}-long-${i}`);
  const longCtx = Math.ceil(SPLIT_MIN_BYTES / (2 * kvRow * 4)) + 8;
  const pos = new Array<number>(maxItems).fill(0);
  const maxPositions = counts.length * (reps + 1) + 1;
  const q = new Float32Array(maxItems * qRow).map((_, j) => Math.sin(j * 0.1));
  const kv = new Float32Array(maxItems * kvRow).map((_, j) => Math.cos(j * 0.07));
  await Promise.all(ids.map((seqId) => client.openSequence({ seqId, layout, maxPositions })));
  const longMax = longCtx + longCounts.length * (reps + 1) + 1;
  await Promise.all(longIds.map((seqId) => client.openSequence({ seqId, layout, maxPositions: longMax })));
  const session = openAttend(client);
  const samples: AttendProbe["samples"] = [];
  let ctxSum = 0;
  let ctxN = 0;
  let stepId = 0n;
  let long: AttendProbe["long"];
  try {
    for (const n of counts) {
      const times: number[] = [];
      const computes: number[] = [];
      for (let r = 0; r <= reps; r++) {
        const attend = async (layer: number) => {
          const res = await session.attend({
            stepId,
            layer,
            items: ids.slice(0, n).map((seqId, i) => ({ seqId, startPos: pos[i]!, nTokens: 1 })),
            q: wireTensor(q.subarray(0, n * qRow), [n, layout.nHeads, layout.headDim], "f16"),
            k: wireTensor(kv.subarray(0, n * kvRow), [n, layout.nKvHeads, layout.headDim], "f16"),
            v: wireTensor(kv.subarray(0, n * kvRow), [n, layout.nKvHeads, layout.headDim], "f16"),
          });
          if (res.error) throw new Error(`Attend probe of ${address}: ${res.error.message}`);
          tensorF32(res.o, "Attend probe o");
          return res;
        };
        const t0 = performance.now();
        const res = await attend(0);
        const t = (performance.now() - t0) / 1000;
        await attend(1);
        stepId++;
        for (let i = 0; i < n; i++) {
          pos[i]!++;
          ctxSum += pos[i]!;
          ctxN++;
        }
        if (r > 0) {
          times.push(t);
          computes.push(res.computeSeconds);
        }
      }
      samples.push({ items: n, seconds: median(times), computeSeconds: median(computes) });
    }
    // Items at a long context: prefill longCtx − 1 positions in both layers (not timed), then decode steps.
    const longStep = async (layer: number, seqs: string[], startPos: number[], nTokens: number) => {
      const rows = seqs.length * nTokens;
      const t0 = performance.now();
      const res = await session.attend({
        stepId: stepId++,
        layer,
        items: seqs.map((seqId, i) => ({ seqId, startPos: startPos[i]!, nTokens })),
        q: wireTensor(new Float32Array(rows * qRow).fill(0.01), [rows, layout.nHeads, layout.headDim], "f16"),
        k: wireTensor(new Float32Array(rows * kvRow).fill(0.02), [rows, layout.nKvHeads, layout.headDim], "f16"),
        v: wireTensor(new Float32Array(rows * kvRow).fill(0.03), [rows, layout.nKvHeads, layout.headDim], "f16"),
      });
      if (res.error) throw new Error(`Attend probe of ${address}: ${res.error.message}`);
      tensorF32(res.o, "Attend probe o");
      return { seconds: (performance.now() - t0) / 1000, computeSeconds: res.computeSeconds };
    };
    const longPos = longIds.map(() => 0);
    for (const seqId of longIds) for (const layer of [0, 1]) await longStep(layer, [seqId], [0], longCtx - 1);
    longPos.fill(longCtx - 1);
    const longSamples: AttendProbe["samples"] = [];
    let longCtxSum = 0;
    let longCtxN = 0;
    for (const n of longCounts) {
      const seqs = longIds.slice(0, n);
      const lt: number[] = [];
      const lc: number[] = [];
      for (let r = 0; r <= reps; r++) {
        const x = await longStep(0, seqs, longPos, 1);
        await longStep(1, seqs, longPos, 1);
        for (let i = 0; i < n; i++) {
          longPos[i]!++;
          longCtxSum += longPos[i]!;
          longCtxN++;
        }
        if (r > 0) {
          lt.push(x.seconds);
          lc.push(x.computeSeconds);
        }
      }
      longSamples.push({ items: n, seconds: median(lt), computeSeconds: median(lc) });
    }
    long = {
      samples: longSamples,
      kvBytes: (longCtxSum / longCtxN) * 2 * kvRow * 4,
      splitMinBytes: SPLIT_MIN_BYTES,
    };
  } finally {
    await session.end();
    await Promise.allSettled([...ids, ...longIds].map((seqId) => client.closeSequence({ seqId })));
    client.close();
  }
  return {
    samples,
    itemWireBytes: (2 * qRow + 2 * kvRow) * 2,
    itemKvBytes: (ctxSum / ctxN) * 2 * kvRow * 4,
    long,
  };
}

/**
 * Seconds per f32 logit value of the gpu-node → coordinator hand-off beyond
 * the link: a [64, 32000] f32 logits tensor encoded (protobuf toBinary) and
 * decoded (fromBinary, then core's tensorF32), and each row sampled
 * greedily (core's run.c sampler, temperature 0); best of 5 ÷ logit values.
 */
export function timeSampleLogit(batch = 64, vocab = 32000): number {
  const logits = new Float32Array(batch * vocab).map((_, j) => Math.sin(j * 0.013));
  const sampler = createSampler({ vocabSize: vocab, temperature: 0, topP: 0.9, seed: 1 });
  let best = Infinity;
  for (let r = 0; r < 6; r++) {
    const t0 = performance.now();
    const bytes = toBinary(
      TensorSchema,
      create(TensorSchema, { dtype: 1, shape: [batch, vocab], data: new Uint8Array(logits.buffer) }),
    );
    const back = tensorF32(fromBinary(TensorSchema, bytes), "logits");
    for (let i = 0; i < batch; i++) sampler.sample(back.subarray(i * vocab, (i + 1) * vocab));
    const t = (performance.now() - t0) / 1000;
    if (r > 0) best = Math.min(best, t);
  }
  return best / (batch * vocab);
}

/**
 * The profile's calibration step against a running bench cluster (once,
 * before any workload): {@link probeAttend} of its memory- and
 * storage-node, added to `profile` as `attend`.
 */
export async function calibrateOnCluster(profile: MachineProfile, cluster: LocalCluster): Promise<void> {
  const t0 = performance.now();
  profile.attend = {
    memory: await probeAttend(cluster.node("memory").address),
    storage: await probeAttend(cluster.node("storage").address),
  };
  progress(
    `plan: Attend probes of the cluster's memory- and storage-node in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

/** One workload of the comparison. */
export interface PlanWorkload {
  model: BenchModel;
  batch: number;
  /** Approximate prompt tokens (the measured mean is used for the prediction). */
  promptTokens: number;
  kv: AttentionRole;
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

/**
 * Runs every workload of `model` on one local cluster, fastest of `reps`
 * runs each; `specsOf` gives the node figures once the cluster is up (the
 * first call calibrates the profile on it, later ones reuse the figures).
 */
async function measureModel(
  model: BenchModel,
  workloads: PlanWorkload[],
  specsOf: (cluster: LocalCluster) => Promise<LocalNodeSpecs>,
  o: BenchOptions,
  reps: number,
): Promise<PlanRow[]> {
  const path = await ensureModel(model, o.cacheDir);
  progress(`plan: starting the local cluster on ${model.name}`);
  const cluster = await startBenchCluster(path, {}, o);
  const rows: PlanRow[] = [];
  try {
    const specs = await specsOf(cluster);
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
  let specs: LocalNodeSpecs | undefined;
  const specsOf = async (cluster: LocalCluster) => {
    if (!specs) {
      await calibrateOnCluster(profile, cluster);
      specs = localNodeSpecs(profile);
    }
    return specs;
  };
  const workloads = planWorkloads(short, o.quick);
  const rows: PlanRow[] = [];
  for (const model of [...new Set(workloads.map((w) => w.model))])
    rows.push(
      ...(await measureModel(
        model,
        workloads.filter((w) => w.model === model),
        specsOf,
        o,
        reps,
      )),
    );
  return { profile, specs: specs!, rows };
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
    `- a layer's pre + post graphs at dim 64, each after ${LAYER_GAP_MS} ms idle (fixed cost per layer): ${(p.denseLayerOverheadS * 1e6).toFixed(0)} µs`,
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
      `links RTT ${(s.gpu.link.rttS * 1e6).toFixed(0)} µs, ${gbs(s.gpu.link.bandwidth)}`,
  );
  const us = (x: number | undefined) => `${((x ?? 0) * 1e6).toFixed(0)} µs`;
  for (const [role, probe] of Object.entries(p.attend ?? {})) {
    const c = fitAttendProbe(probe);
    const a = role === "memory" ? s.memory : s.storage;
    console.log(
      `- Attend probe of the ${role}-node (items: round trip / compute, median): ` +
        probe.samples.map((x) => `${x.items}: ${ms(x.seconds)} / ${ms(x.computeSeconds)} ms`).join(", ") +
        `; fit: compute ${us(c.requestComputeS)} + ${us(c.itemComputeS)}/item, wire ${us(c.requestWireS)} + ${us(c.itemWireS)}/item` +
        ` → requestComputeS ${us(a.requestComputeS)}, unitOverheadS ${us(a.unitOverheadS)}, requestOverheadS ${us(a.requestOverheadS)}, unitWireS ${us(a.unitWireS)}` +
        (probe.long
          ? `; long items (${(probe.long.kvBytes / 2 ** 20).toFixed(2)} MiB of KV each): ` +
            probe.long.samples.map((x) => `${x.items}: ${ms(x.seconds)} / ${ms(x.computeSeconds)} ms`).join(", ") +
            ` → splitOverheadS ${us(a.splitOverheadS)}`
          : ""),
    );
  }
  console.log(
    `- logits hand-off (protobuf + greedy sampling): ${((p.sampleLogitS ?? 0) * 1e9).toFixed(2)} ns per logit` +
      ` (${ms((p.sampleLogitS ?? 0) * 32000)} ms per sequence at vocab 32000)\n`,
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
