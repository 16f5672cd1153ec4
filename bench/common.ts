/**
 * What the benchmarks of issue 3 share: the generated models (created on
 * first use into a cache folder), prompts of an exact token count, the
 * local cluster they run on, progress output and the result rows of the
 * report table.
 */
import { existsSync } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parameterCount, type ModelShape } from "@tessera/core";
import { loadTokenizer, readModelHeader, synthesizeWeights, writeHfModel, type Tokenizer } from "@tessera/model";
import type { Summary } from "@tessera/proto";
import { bundled, startLocalCluster } from "@tessera/cli";

/** llama2.c's 32000-token Llama 2 tokenizer, beside the bundled model. */
export const LLAMA_TOKENIZER = join(bundled.model, "../tokenizer.bin");

/** A generated model the benches use, stored as a Hugging Face folder. */
export interface BenchModel {
  /** Folder name in the cache. */
  name: string;
  shape: ModelShape;
  dtype: "f16" | "f32";
  seed: number;
}

/**
 * Issue 3's benchmark model: dim 2048, hidden 5632, 16 layers, 32 heads,
 * 8 KV heads (GQA 4), vocab 32000, f16, untied classifier: 852M
 * parameters (787M streamed per decode step: all but the embedding), 64 KiB
 * of f32 KV per position.
 */
export const LLAMA_2048: BenchModel = {
  name: "llama-2048-f16",
  shape: {
    dim: 2048,
    hiddenDim: 5632,
    nLayers: 16,
    nHeads: 32,
    nKvHeads: 8,
    vocabSize: 32000,
    seqLen: 4096,
    headDim: 64,
    ropeTheta: 10000,
    normEps: 1e-5,
  },
  dtype: "f16",
  seed: 2048,
};

/**
 * The beyond-RAM model: the same KV per position as {@link LLAMA_2048}
 * (16 layers × 8 KV heads × head_dim 64: 64 KiB) but narrow dense layers
 * (dim 512 = 8 heads × 64, no GQA, hidden 256), so that filling 2 GiB of KV
 * takes minutes, not the hours the 2048-wide model would on 2 cores.
 * Attention per position pair is 1/4 of LLAMA_2048's (8 query heads, not 32).
 */
export const NARROW_KV64K: BenchModel = {
  name: "narrow-512-kv64k-f16",
  shape: {
    dim: 512,
    hiddenDim: 256,
    nLayers: 16,
    nHeads: 8,
    nKvHeads: 8,
    vocabSize: 32000,
    seqLen: 4096,
    headDim: 64,
    ropeTheta: 10000,
    normEps: 1e-5,
  },
  dtype: "f16",
  seed: 512,
};

/** Options every bench takes from the command line. */
export interface BenchOptions {
  /** Decode steps timed per run (per batch size). */
  steps: number;
  /** Fewer steps and smaller batches: a smoke run. */
  quick: boolean;
  /** Where generated models are kept between runs. */
  cacheDir: string;
  /** Copy the nodes' logs to stderr. */
  verbose: boolean;
}

/** Default cache folder of generated models: $TESSERA_BENCH_DIR, else <tmpdir>/tessera-bench. */
export function defaultCacheDir(): string {
  return resolve(process.env["TESSERA_BENCH_DIR"] ?? join(tmpdir(), "tessera-bench"));
}

const t0 = performance.now();

/** A progress line on stderr, with seconds since the bench started. */
export function progress(line: string): void {
  process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${line}\n`);
}

/** Parameter count of a bench model (untied classifier). */
export function paramsOf(m: BenchModel): number {
  return parameterCount(m.shape, false);
}

/**
 * Path of `m` in the cache, generating it first when it is missing
 * ({@link synthesizeWeights} then {@link writeHfModel}, into a temporary
 * folder renamed into place, so an interrupted run leaves no half model).
 * Generating LLAMA_2048 holds about 5 GiB for a minute or two.
 */
export async function ensureModel(m: BenchModel, cacheDir: string): Promise<string> {
  const dir = join(cacheDir, m.name);
  if (existsSync(join(dir, "config.json"))) {
    // Reading the header checks every tensor lies inside its file (a folder still being written fails here).
    const header = await readModelHeader(dir).catch((err: unknown) => {
      throw new Error(
        `${dir} is not a complete model (remove it to have it generated again): ${(err as Error).message}`,
      );
    });
    const keys = ["dim", "hiddenDim", "nLayers", "nHeads", "nKvHeads", "headDim", "vocabSize"] as const;
    if (keys.some((k) => header.shape[k] !== m.shape[k]))
      throw new Error(`${dir} holds a model of another shape than ${m.name}; remove it or use --cache-dir`);
    return dir;
  }
  progress(`generating ${m.name} (${(paramsOf(m) / 1e6).toFixed(0)}M parameters, ${m.dtype}) into ${dir}`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const weights = synthesizeWeights(m.shape, m.seed);
  await writeHfModel(tmp, m.shape, weights, { dtype: m.dtype, sharedClassifier: false });
  await rename(tmp, dir);
  progress(`generated ${m.name}`);
  return dir;
}

const WORDS = (
  "the cat sat on a warm mat while rain fell over quiet hills and old trees " +
  "spoke of river stone light morning bread garden window letter music"
).split(" ");

/**
 * `count` distinct prompts of exactly `tokens` token ids each (BOS included)
 * under `tokenizer`, built from a fixed word list.
 * @throws Error when no prompt of that length can be built.
 */
export function promptsOfLength(tokenizer: Tokenizer, count: number, tokens: number): string[] {
  const length = (words: string[]) => tokenizer.encode(words.join(" "), { bos: true, eos: false }).length;
  return Array.from({ length: count }, (_, i) => {
    const words: string[] = [];
    for (let j = i; length(words) < tokens; j++) words.push(WORDS[j % WORDS.length]!);
    if (length(words) !== tokens) throw new Error(`cannot build a prompt of exactly ${tokens} tokens`);
    return words.join(" ");
  });
}

/** The 32000-token tokenizer the bench models use. */
export function benchTokenizer(): Promise<Tokenizer> {
  return loadTokenizer(LLAMA_TOKENIZER, 32000);
}

/**
 * Starts the local cluster (coordinator, gpu-node, memory-node,
 * storage-node as child processes on loopback gRPC, as `tessera run`) on a
 * bench model, with extra CLI flags per role.
 */
export function startBenchCluster(
  model: string,
  flags: { gpu?: string[]; memory?: string[]; storage?: string[]; coordinator?: string[] },
  o: BenchOptions,
) {
  return startLocalCluster({
    model,
    tokenizer: LLAMA_TOKENIZER,
    flags,
    verbose: o.verbose,
    readyTimeoutMs: 120_000,
  });
}

/**
 * The gpu-node's share of decode steps spent idle waiting for attention,
 * from the coordinator's summary: gpu-node step time (coordinator round
 * trip minus the coordinator's own share) minus its busy (dense) time.
 */
export function gpuIdleShare(s: Summary): { idle: number; gpuSeconds: number; denseSeconds: number } {
  const b = s.decodeBreakdown;
  if (!b || b.steps === 0) return { idle: NaN, gpuSeconds: NaN, denseSeconds: NaN };
  const gpuSeconds = b.stepSeconds - b.coordinatorSeconds;
  return { idle: Math.max(0, gpuSeconds - b.denseSeconds) / gpuSeconds, gpuSeconds, denseSeconds: b.denseSeconds };
}

/** One line of the report table. */
export interface ResultRow {
  /** Benchmark section, e.g. "split overhead". */
  bench: string;
  /** What was measured, e.g. "batch 16". */
  what: string;
  /** The figure with its unit. */
  figure: string;
  /** What it is divided by, with its unit. */
  baseline: string;
  /** figure ÷ baseline; NaN when there is none. */
  ratio: number;
  /** Target for the ratio, e.g. "≥ 0.90"; "" when none. */
  target: string;
  /** Whether the target is met; undefined when there is none. */
  met?: boolean;
}

/** Formats tokens/s. */
export const tps = (x: number) => `${x.toFixed(x < 10 ? 2 : 1)} tok/s`;
/** Formats bytes/s as GB/s. */
export const gbs = (x: number) => `${(x / 1e9).toFixed(2)} GB/s`;

/**
 * Prints `rows` under `title` as a Markdown table with the columns
 * benchmark, measured, figure, target (the load benches' summary).
 */
export function printFigureTable(title: string, rows: string[][]): void {
  const head = ["benchmark", "measured", "figure", "target"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  console.log(`\n${title}:\n`);
  console.log(fmt(head));
  console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
  for (const l of rows) console.log(fmt(l));
  console.log();
}
