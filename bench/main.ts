/**
 * `npm run bench`: issue 3's benchmarks, each figure a ratio measured in the
 * same run, on a generated model (dim 2048, hidden 5632, 16 layers, 32
 * heads, 8 KV heads, vocab 32000, f16 Hugging Face folder; created on first
 * use in the cache folder):
 *
 * - split: decode tokens/s of the local cluster (gpu-node, memory-node,
 *   coordinator as child processes, loopback gRPC) ÷ the same onnxruntime
 *   graphs with the memory-node's attention kernel in one process, at batch
 *   1, 16 and 64;
 * - dense: weight bytes streamed per decode step ÷ the in-process dense time
 *   per step at batch 16, against the memory read bandwidth measured here;
 * - beyond-ram: a 2 GiB batch on the storage-node with the memory-node
 *   capped at 256 MiB (narrow model with the same KV per position);
 * - pipelining: cluster tokens/s at batch 64 with 1, 2 and 4 micro-batches,
 *   and the gpu-node's idle share;
 * - attention: bench/attention.ts (memory-node decode attention roofline);
 * - plan (only with `--only plan`, `npm run bench:plan`): the cost model's
 *   predicted decode step against the measured one (bench/plan-vs-measured.ts).
 * - price (only with `--only price`): two memory-nodes of different price,
 *   capacity and speed; sequences per node against the plan, measured $ per
 *   million tokens of each placement (bench/price-placement.ts).
 * - tracing (only with `--only tracing`): decode tok/s with OpenTelemetry
 *   tracing off, on at TESSERA_TRACE_STEP_EVERY=16 and 1 (OTLP/HTTP to a
 *   span-counting sink in the bench), and with the Prometheus metrics
 *   endpoint on and scraped; interleaved rounds, one worker process per
 *   mode (bench/tracing.ts).
 * - load (only with `--only load`, `npm run bench:load`): 1,000 queued batch
 *   jobs through NATS; jobs/s, queue wait, the coordinator's memory
 *   (bench/load.ts), then the two-tenant scenario (also alone with `--only
 *   tenants`): one tenant's longest prompts against another's short calls,
 *   its latency loaded vs unloaded, nodes lost, SIGTERM time (bench/tenant-load.ts).
 *
 * Progress goes to stderr; the result table (Markdown) to stdout.
 * Run `node --import tsx bench/main.ts --help` for the options.
 */
import { parseArgs } from "node:util";
import { measureReadBandwidth, type ReadBandwidth } from "./bandwidth.js";
import { runBeyondRam } from "./beyond-ram.js";
import {
  LLAMA_2048,
  NARROW_KV64K,
  defaultCacheDir,
  ensureModel,
  gbs,
  gpuIdleShare,
  paramsOf,
  progress,
  tps,
  type BenchModel,
  type BenchOptions,
  type ResultRow,
} from "./common.js";
import {
  agreeing,
  faster,
  loadInProcess,
  runInProcessBatch,
  startCluster,
  type BenchCluster,
  type ClusterResult,
  type InProcessResult,
} from "./split.js";

const BENCHES = [
  "split",
  "dense",
  "beyond-ram",
  "pipelining",
  "attention",
  "plan",
  "price",
  "load",
  "tenants",
  "tracing",
] as const;
type Bench = (typeof BENCHES)[number];
/** What runs without --only: issue 3's benches (issue 4's plan and price run with --only plan / --only price). */
const DEFAULT_BENCHES: readonly Bench[] = ["split", "dense", "beyond-ram", "pipelining", "attention"];

const HELP = `Usage: node --import tsx bench/main.ts [options]   (npm run bench -- [options])

  --only <list>      comma-separated subset of ${BENCHES.join(",")} (default: all but plan, price)
  --steps <n>        decode steps timed per run (default 8; --quick 3)
  --reps <n>         runs per figure, the fastest kept; in-process and cluster runs alternate (default 2; --quick 1)
  --quick            smoke run: fewer steps, batch 64 -> 16, beyond-ram at 512 MiB
  --small            run split/dense/pipelining on a dim-256 model instead of dim 2048 (development)
  --cache-dir <dir>  generated models (default $TESSERA_BENCH_DIR or <tmpdir>/tessera-bench)
  --verbose          copy the nodes' logs to stderr
`;

/** A small model for developing the harness: same layer count and GQA, 1/8 the width. */
const SMALL: BenchModel = {
  name: "small-256-f16",
  shape: { ...LLAMA_2048.shape, dim: 256, hiddenDim: 704, nHeads: 4, nKvHeads: 1 },
  dtype: "f16",
  seed: 256,
};

function parse(): { benches: Set<Bench>; o: BenchOptions; small: boolean; reps: number; repsGiven: boolean } {
  const { values } = parseArgs({
    options: {
      only: { type: "string" },
      steps: { type: "string" },
      reps: { type: "string" },
      quick: { type: "boolean", default: process.env["BENCH_QUICK"] === "1" },
      small: { type: "boolean", default: false },
      "cache-dir": { type: "string" },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  const benches = new Set<Bench>();
  for (const b of (values.only ?? DEFAULT_BENCHES.join(",")).split(",").map((s) => s.trim())) {
    if (!(BENCHES as readonly string[]).includes(b))
      throw new Error(`--only: unknown bench "${b}" (${BENCHES.join(", ")})`);
    benches.add(b as Bench);
  }
  const quick = values.quick;
  const steps = values.steps === undefined ? (quick ? 3 : 8) : Number(values.steps);
  if (!(Number.isInteger(steps) && steps >= 1))
    throw new Error(`--steps: expected a positive integer, got ${values.steps}`);
  const reps = values.reps === undefined ? (quick ? 1 : 2) : Number(values.reps);
  if (!(Number.isInteger(reps) && reps >= 1))
    throw new Error(`--reps: expected a positive integer, got ${values.reps}`);
  return {
    benches,
    small: values.small,
    reps,
    repsGiven: values.reps !== undefined,
    o: { steps, quick, cacheDir: values["cache-dir"] ?? defaultCacheDir(), verbose: values.verbose },
  };
}

const gb = (x: number) => `${(x / 1e9).toFixed(2)} GB`;
const gib = (x: number) => `${(x / 2 ** 30).toFixed(2)} GiB`;
const ratio = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "");
const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

function printTable(rows: ResultRow[]): void {
  const head = ["benchmark", "measured", "figure", "baseline", "ratio", "target", "met"];
  const lines = rows.map((r) => [
    r.bench,
    r.what,
    r.figure,
    r.baseline,
    ratio(r.ratio),
    r.target,
    r.met === undefined ? "" : r.met ? "yes" : "no",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  console.log(fmt(head));
  console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
  for (const l of lines) console.log(fmt(l));
}

async function main(): Promise<void> {
  const { benches, o, small, reps, repsGiven } = parse();
  const model = small ? SMALL : LLAMA_2048;
  const rows: ResultRow[] = [];
  const notes: string[] = [];
  const t0 = performance.now();

  progress("measuring memory read bandwidth");
  const bw: ReadBandwidth = await measureReadBandwidth();
  notes.push(
    `memory read bandwidth: ${gbs(bw.bytesPerSecond)} one thread (memcmp ${gbs(bw.memcmp)}, JS f64 sum ${gbs(bw.jsSum)}), ` +
      `${gbs(bw.allCoresMeasured)} with ${bw.threads} threads at once (memcmp)`,
  );
  progress(notes[0]!);

  const batches = o.quick ? [1, 16] : [1, 16, 64];
  const big = o.quick ? 16 : 64;
  const needModel = benches.has("split") || benches.has("dense") || benches.has("pipelining");
  const path = needModel ? await ensureModel(model, o.cacheDir) : "";
  if (needModel) {
    const s = model.shape;
    notes.push(
      `model: ${model.name} (dim ${s.dim}, hidden ${s.hiddenDim}, ${s.nLayers} layers, ${s.nHeads} heads, ${s.nKvHeads} KV heads, ` +
        `vocab ${s.vocabSize}, ${(paramsOf(model) / 1e6).toFixed(0)}M parameters, stored ${model.dtype}); ` +
        `${o.steps} decode steps timed per run, fastest of ${reps} runs`,
    );
  }

  // In-process baseline (split, dense) and the 1-micro-batch cluster (split,
  // pipelining) are both held at once and measured alternately, `--reps`
  // times each, keeping each side's faster run: other load on the machine
  // then hits both sides alike instead of whichever ran second.
  const inProcess = new Map<number, InProcessResult>();
  let streamedWeightBytes = 0;
  const cluster = new Map<string, ClusterResult>();
  const ipBatches = benches.has("split") ? batches : benches.has("dense") ? [16] : [];
  const clBatches = [
    ...new Set([...(benches.has("split") ? batches : []), ...(benches.has("pipelining") ? [big] : [])]),
  ].sort((a, b) => a - b);
  if (ipBatches.length + clBatches.length > 0) {
    const m = ipBatches.length > 0 ? await loadInProcess(path) : undefined;
    let c: BenchCluster | undefined;
    try {
      c = clBatches.length > 0 ? await startCluster(path, 1, o) : undefined;
      streamedWeightBytes = m?.streamedWeightBytes ?? 0;
      for (const batch of [...new Set([...ipBatches, ...clBatches])].sort((a, b) => a - b)) {
        for (let rep = 0; rep < reps; rep++) {
          if (m && ipBatches.includes(batch))
            inProcess.set(batch, faster(inProcess.get(batch), await runInProcessBatch(m, batch, o)));
          if (c && clBatches.includes(batch))
            cluster.set(`${batch}/1`, faster(cluster.get(`${batch}/1`), await c.run(batch)));
        }
      }
    } finally {
      await c?.stop();
      await m?.release();
    }
  }
  if (benches.has("dense")) {
    const r = inProcess.get(16)!;
    const denseStep = r.decode.denseSeconds / r.decode.steps;
    const rate = streamedWeightBytes / denseStep;
    rows.push({
      bench: "dense roofline",
      what: `batch 16: ${gb(streamedWeightBytes)} of f32 weights / ${(1000 * denseStep).toFixed(0)} ms dense step`,
      figure: gbs(rate),
      baseline: `${gbs(bw.allCores)} (memcmp, best of 1 and ${bw.threads} threads)`,
      ratio: rate / bw.allCores,
      target: "≥ 0.60",
      met: rate / bw.allCores >= 0.6,
    });
  }
  if (benches.has("pipelining")) {
    for (const mb of [2, 4]) {
      const c = await startCluster(path, mb, o);
      try {
        for (let rep = 0; rep < reps; rep++)
          cluster.set(`${big}/${mb}`, faster(cluster.get(`${big}/${mb}`), await c.run(big)));
      } finally {
        await c.stop();
      }
    }
  }

  if (benches.has("split")) {
    for (const b of batches) {
      const c = cluster.get(`${b}/1`)!;
      const p = inProcess.get(b)!;
      const target = b === 1 ? 0.75 : 0.9;
      const same = agreeing(p.tokens, c.tokens);
      rows.push({
        bench: "split overhead",
        what: `batch ${b} (cluster ÷ in-process; tokens agree ${same}/${b})`,
        figure: tps(c.tokensPerSecond),
        baseline: tps(p.tokensPerSecond),
        ratio: c.tokensPerSecond / p.tokensPerSecond,
        target: `≥ ${target.toFixed(2)}`,
        met: c.tokensPerSecond / p.tokensPerSecond >= target,
      });
    }
  }

  if (benches.has("pipelining")) {
    const one = cluster.get(`${big}/1`)!;
    for (const mb of [1, 2, 4]) {
      const c = cluster.get(`${big}/${mb}`)!;
      const idle = gpuIdleShare(c.summary);
      rows.push({
        bench: "pipelining",
        what: `batch ${big}, ${mb} micro-batch${mb > 1 ? "es" : ""}: gpu-node idle ${pct(idle.idle)} of its step`,
        figure: tps(c.tokensPerSecond),
        baseline: `${tps(one.tokensPerSecond)} (1 micro-batch)`,
        ratio: c.tokensPerSecond / one.tokensPerSecond,
        target: "",
      });
    }
  }

  if (benches.has("beyond-ram")) {
    const r = await runBeyondRam(o);
    const decode = r.summary.decodeTokensPerSecond;
    rows.push({
      bench: "beyond RAM",
      what:
        `${r.sequences} seqs x ${r.positions} positions = ${gib(r.kvBytes)} KV (${gib(r.kvBytesWritten)} written), ` +
        `${r.onStorage}/${r.sequences} on the storage-node, memory-node capped at 256 MiB; ${NARROW_KV64K.name}`,
      figure: `${tps(decode)} decode`,
      baseline: `${tps(r.generatedTokens / r.wallSeconds)} end to end, prefill ${tps(r.prefillTokensPerSecond)}`,
      ratio: NaN,
      target: "completes",
      met: r.onStorage === r.sequences,
    });
    notes.push(
      `beyond RAM uses ${NARROW_KV64K.name} (dim 512, hidden 256, 16 layers, 8 heads, 8 KV heads: the same 64 KiB of KV per ` +
        `position as the dim-2048 model, narrow dense layers so 32K positions of prefill fit in minutes)`,
    );
  }

  notes.push(`total ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  console.log();
  printTable(rows);
  console.log();
  for (const n of notes) console.log(`- ${n}`);

  if (benches.has("plan")) {
    const { runPlanVsMeasured, printPlanVsMeasured } = await import("./plan-vs-measured.js");
    // One run per workload unless --reps says otherwise: two would take the bench past 6 minutes.
    printPlanVsMeasured(await runPlanVsMeasured(o, small ? SMALL : LLAMA_2048, repsGiven ? reps : 1));
  }

  if (benches.has("price")) {
    const { runPricePlacement, printPricePlacement } = await import("./price-placement.js");
    printPricePlacement(await runPricePlacement(o, repsGiven ? reps : 1));
  }

  if (benches.has("load")) {
    const { runLoad, printLoad } = await import("./load.js");
    printLoad(await runLoad(o));
  }

  if (benches.has("load") || benches.has("tenants")) {
    const { runTenantLoad, printTenantLoad } = await import("./tenant-load.js");
    printTenantLoad(await runTenantLoad(o));
  }

  if (benches.has("tracing")) {
    const { runTracingBench, printTracingBench } = await import("./tracing.js");
    printTracingBench(await runTracingBench(16, 256, repsGiven ? reps : 9));
  }

  if (benches.has("attention")) {
    console.log("\nattention roofline (bench/attention.ts):");
    const { runAttentionBench } = await import("./attention.js");
    await runAttentionBench();
  }
}

await main();
