/**
 * Decode runs of one model, in one process ({@link InProcessModel}) and on
 * the local cluster, for the split-overhead, dense-roofline and pipelining
 * figures. Prefill is never timed: the in-process run times its decode
 * steps, the cluster's summary its decode phase (coordinator
 * `decode_tokens_per_second`: decode tokens ÷ time from the first decode
 * step to the end of the job).
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { KvPlacement, type Summary } from "@tessera/proto";
import { generate } from "@tessera/testing";
import { InProcessModel, type StepTimes } from "./in-process.js";
export { InProcessModel };
import { benchTokenizer, progress, promptsOfLength, startBenchCluster, type BenchOptions } from "./common.js";

/** Prompt length of the decode runs, in tokens (BOS included). */
export const PROMPT_TOKENS = 4;

/** One batch size's in-process decode. */
export interface InProcessResult {
  batch: number;
  tokensPerSecond: number;
  decode: StepTimes;
  /** Greedy tokens per sequence, to check the cluster against. */
  tokens: number[][];
}

/** Prompt texts and their token ids for a batch. */
async function batchPrompts(batch: number): Promise<{ texts: string[]; ids: number[][] }> {
  const tokenizer = await benchTokenizer();
  const texts = promptsOfLength(tokenizer, batch, PROMPT_TOKENS);
  return { texts, ids: texts.map((t) => tokenizer.encode(t, { bos: true, eos: false })) };
}

/**
 * A full garbage collection now: loading leaves gigabytes of graph bytes
 * and weight arrays for V8 to collect, which it would otherwise do during
 * the timed steps (the gpu-node process collects them before it serves).
 */
function collectGarbage(): void {
  setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
}

/** Loads `model` in this process, collects the loading garbage and warms it up (one batch-1 step). */
export async function loadInProcess(model: string): Promise<InProcessModel> {
  progress(`in-process: loading ${model}`);
  const t0 = performance.now();
  const m = await InProcessModel.load(model);
  collectGarbage();
  await m.generate((await batchPrompts(1)).ids, 2);
  progress(`in-process: loaded and warm in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return m;
}

/** Times `o.steps` in-process decode steps at batch `batch`. */
export async function runInProcessBatch(m: InProcessModel, batch: number, o: BenchOptions): Promise<InProcessResult> {
  const { ids } = await batchPrompts(batch);
  const run = await m.generate(ids, o.steps + 1);
  const d = run.decode;
  const tokensPerSecond = (batch * d.steps) / d.seconds;
  const ms = (x: number) => ((1000 * x) / d.steps).toFixed(0);
  progress(
    `in-process batch ${batch}: ${tokensPerSecond.toFixed(2)} tok/s, ${ms(d.seconds)} ms/step ` +
      `(dense ${ms(d.denseSeconds)} ms, attention ${ms(d.attentionSeconds)} ms)`,
  );
  return { batch, tokensPerSecond, decode: d, tokens: run.tokens };
}

/** One batch size's decode on the cluster. */
export interface ClusterResult {
  batch: number;
  microBatches: number;
  tokensPerSecond: number;
  summary: Summary;
  /** Generated tokens per sequence, in prompt order. */
  tokens: number[][];
}

/** A started, warmed-up local cluster that runs decode batches. */
export interface BenchCluster {
  microBatches: number;
  /** Greedy decode of `o.steps` steps at batch `batch`, KV on the memory-node. */
  run(batch: number): Promise<ClusterResult>;
  stop(): Promise<void>;
}

/**
 * Starts the local cluster with the gpu-node splitting steps into
 * `microBatches` micro-batches (all in flight at once) and warms it up
 * (model load and one batch-1 step).
 */
export async function startCluster(model: string, microBatches: number, o: BenchOptions): Promise<BenchCluster> {
  progress(`cluster (${microBatches} micro-batch${microBatches > 1 ? "es" : ""}): starting on ${model}`);
  const cluster = await startBenchCluster(
    model,
    { gpu: ["--micro-batches", String(microBatches), "--max-in-flight", String(microBatches)] },
    o,
  );
  try {
    const t0 = performance.now();
    await generate(cluster.address, {
      prompts: [{ id: "warm", prompt: "Hi" }],
      sampling: { maxTokens: 2 },
      kv: KvPlacement.MEMORY,
    });
    progress(`cluster: model loaded and warm in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  const run = async (batch: number): Promise<ClusterResult> => {
    const { texts } = await batchPrompts(batch);
    const res = await generate(cluster.address, {
      prompts: texts.map((prompt, i) => ({ id: `p${i}`, prompt })),
      sampling: { temperature: 0, maxTokens: o.steps + 1 },
      kv: KvPlacement.MEMORY,
    });
    const summary = res.summary;
    if (!summary) throw new Error("the coordinator sent no summary");
    const errors = [...res.results.values()].filter((r) => r.finishReason === "error");
    if (errors.length > 0) throw new Error(`cluster run failed: ${errors[0]!.error}`);
    const tokens = texts.map((_, i) => res.results.get(`p${i}`)?.completionTokenIds ?? []);
    const short = tokens.filter((t) => t.length < o.steps + 1).length;
    if (short > 0) progress(`  note: ${short} of ${batch} sequences stopped early (EOS/BOS sampled)`);
    const b = summary.decodeBreakdown!;
    const ms = (x: number) => ((1000 * x) / b.steps).toFixed(0);
    progress(
      `cluster batch ${batch}, ${microBatches} micro-batch(es): ${summary.decodeTokensPerSecond.toFixed(2)} tok/s, ` +
        `${ms(b.stepSeconds)} ms/step (dense ${ms(b.denseSeconds)} ms, attention ${ms(b.attentionComputeSeconds)} ms, ` +
        `wire ${ms(b.attentionWireSeconds)} ms, coordinator ${ms(b.coordinatorSeconds)} ms)`,
    );
    return { batch, microBatches, tokensPerSecond: summary.decodeTokensPerSecond, summary, tokens };
  };
  return { microBatches, run, stop: () => cluster.stop() };
}

/** The faster of two runs (by tokens/s); `b` when `a` is undefined. */
export function faster<T extends { tokensPerSecond: number }>(a: T | undefined, b: T): T {
  return a && a.tokensPerSecond >= b.tokensPerSecond ? a : b;
}

/** Sequences whose tokens agree (over the shorter of the two, for sequences that stopped at EOS). */
export function agreeing(a: number[][], b: number[][]): number {
  let n = 0;
  a.forEach((x, i) => {
    const y = b[i] ?? [];
    const len = Math.min(x.length, y.length);
    if (len > 0 && x.slice(0, len).every((t, j) => t === y[j])) n++;
  });
  return n;
}
