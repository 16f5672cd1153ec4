/**
 * `node --import tsx bench/main.ts --only load` (`npm run bench:load`;
 * issue 5, "Done when" item 2): a coordinator's job worker drains a queue
 * of 1,000 small batch jobs, and its memory does not grow with the number
 * of jobs it has finished.
 *
 * Scenario: the real NATS server ($TESSERA_NATS, default 127.0.0.1:4222)
 * under a random prefix (its job stream, job-state and job-data buckets and
 * node-registry bucket are deleted at the end); the local cluster (gpu-,
 * memory-, storage-node and coordinator, child processes on loopback gRPC)
 * on the bundled stories260K with `--nats`, so the nodes register and the
 * coordinator runs the job worker (one job at a time). {@link JOBS} jobs
 * (200 with --quick) of 1 or 2 prompts, {@link MAX_TOKENS} tokens each at
 * temperature 0.8, are submitted through {@link JobStore.submit} as fast as
 * NATS takes them ({@link SUBMIT_CONCURRENCY} at once) right after the
 * cluster is ready; the bench then waits until every job has ended.
 *
 * Figures, from the job states (a watch of the whole job-state bucket):
 * - jobs/s: jobs ended ÷ (last finishedAt − first startedAt);
 * - queue wait: startedAt (first claim) − submittedAt, p50 and p99;
 * - run time: finishedAt − startedAt, p50 and p99;
 * - the coordinator's memory at 10%, 25%, 50%, 75% and 100% of the jobs
 *   ended (100, 250, 500, 750, 1000): RSS (VmRSS of /proc/<pid>/status,
 *   sampled every second; the sample at the milestone) and, after a full
 *   garbage collection in the coordinator, V8 heap used and RSS. The heap
 *   figures come from a preload script given to the cluster's processes
 *   through NODE_OPTIONS (`--require`): on SIGUSR2 it collects garbage and
 *   writes process.memoryUsage() to a file. "Does not grow" is
 *   RSS(100%) ÷ RSS(25%) and heap(100%) ÷ heap(25%) of the same process:
 *   target ≤ 1.10 for the heap after GC (RSS is reported, not judged: the
 *   allocator keeps pages it once used).
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { JobStore, connectNats, isTerminal, registryBucket, type JobState } from "@tessera/nats";
import { STORY_OPENINGS } from "@tessera/testing";
import { bundled, startLocalCluster, type LocalCluster } from "@tessera/cli";
import { printFigureTable, progress, type BenchOptions } from "./common.js";

/** Jobs submitted (--quick: {@link QUICK_JOBS}). */
export const JOBS = 1000;
/** Jobs submitted with --quick. */
export const QUICK_JOBS = 200;
/** Tokens generated per prompt. */
export const MAX_TOKENS = 4;
/** Submits in flight at once. */
export const SUBMIT_CONCURRENCY = 32;
/** Shares of the jobs at which the coordinator's memory is taken. */
export const MILESTONES = [0.1, 0.25, 0.5, 0.75, 1] as const;

const enc = new TextEncoder();

/** The coordinator's memory at one milestone. */
export interface MemorySample {
  /** Jobs ended when it was taken. */
  jobsEnded: number;
  /** VmRSS, bytes: the last one-second sample. */
  rss: number;
  /** After a full GC in the coordinator (undefined when the preload did not answer): V8 heap used and RSS, bytes. */
  heapUsedAfterGc?: number;
  rssAfterGc?: number;
}

/** What {@link runLoad} measured. */
export interface LoadResult {
  jobs: number;
  prompts: number;
  /** Jobs still queued (not yet claimed) when the last submit returned. */
  queuedAfterSubmit: number;
  submitSeconds: number;
  completed: number;
  failed: number;
  /** Jobs ended ÷ (last finishedAt − first startedAt). */
  jobsPerSecond: number;
  completionTokens: number;
  queueWait: { p50: number; p99: number };
  runTime: { p50: number; p99: number };
  memory: MemorySample[];
  /** Peak VmRSS of the coordinator over the run, bytes. */
  peakRss: number;
  wallSeconds: number;
}

/** Preload for the cluster's processes: on SIGUSR2, full GC, then process.memoryUsage() to $TESSERA_LOAD_MEM_DIR/<pid>.json. */
const PRELOAD = `
const dir = process.env.TESSERA_LOAD_MEM_DIR;
if (dir) {
  process.on("SIGUSR2", () => {
    require("node:v8").setFlagsFromString("--expose-gc");
    require("node:vm").runInNewContext("gc")();
    const m = process.memoryUsage();
    const f = require("node:path").join(dir, process.pid + ".json");
    require("node:fs").writeFileSync(f + ".tmp", JSON.stringify({ at: Date.now(), ...m }));
    require("node:fs").renameSync(f + ".tmp", f);
  });
}
`;

/** Value at quantile `q` of sorted `xs` (nearest rank). */
function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  return xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))]!;
}

async function vmRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!m) throw new Error(`/proc/${pid}/status: no VmRSS line`);
  return Number(m[1]) * 1024;
}

/** Asks the preload in `pid` for its memory after a GC; undefined after 5 s without an answer. */
async function heapAfterGc(pid: number, dir: string): Promise<{ heapUsed: number; rss: number } | undefined> {
  const file = join(dir, `${pid}.json`);
  const asked = Date.now();
  process.kill(pid, "SIGUSR2");
  while (Date.now() - asked < 5000) {
    await new Promise((r) => setTimeout(r, 50));
    const m = await readFile(file, "utf8").then(
      (t) => JSON.parse(t) as { at: number; heapUsed: number; rss: number },
      () => undefined,
    );
    if (m && m.at >= asked) return m;
  }
  return undefined;
}

/**
 * Runs the load scenario (see the file's comment) with `jobs` jobs.
 * @throws when the jobs have not all ended within 10 min.
 */
export async function runLoad(o: BenchOptions, jobs = o.quick ? QUICK_JOBS : JOBS): Promise<LoadResult> {
  const servers = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
  const prefix = `load${randomBytes(4).toString("hex")}`;
  const memDir = await mkdtemp(join(tmpdir(), "tessera-load-"));
  const preload = join(memDir, "preload.cjs");
  await writeFile(preload, PRELOAD);
  const nc = await connectNats({ servers, name: "bench-load" });
  const t0 = performance.now();
  let store: JobStore | undefined;
  let cluster: LocalCluster | undefined;
  let sampler: NodeJS.Timeout | undefined;
  try {
    store = await JobStore.open(nc, { prefix });
    const states = await new Kvm(nc).open(store.names.stateBucket);

    progress(`load: starting the local cluster (stories260K, --nats ${servers}, prefix ${prefix})`);
    const savedOptions = process.env["NODE_OPTIONS"];
    process.env["NODE_OPTIONS"] = `${savedOptions ?? ""} --require ${preload}`.trim();
    process.env["TESSERA_LOAD_MEM_DIR"] = memDir;
    try {
      cluster = await startLocalCluster({
        model: bundled.model,
        tokenizer: bundled.tokenizer,
        nats: { servers, prefix },
        verbose: o.verbose,
        readyTimeoutMs: 120_000,
      });
    } finally {
      if (savedOptions === undefined) delete process.env["NODE_OPTIONS"];
      else process.env["NODE_OPTIONS"] = savedOptions;
      delete process.env["TESSERA_LOAD_MEM_DIR"];
    }
    const pid = cluster.node("coordinator").child.pid!;
    let rss = await vmRss(pid);
    let peakRss = rss;
    sampler = setInterval(() => {
      vmRss(pid).then(
        (r) => {
          rss = r;
          peakRss = Math.max(peakRss, r);
        },
        () => undefined,
      );
    }, 1000);

    // Every job's latest state, and memory samples as jobs end.
    const last = new Map<string, JobState>();
    const ended = new Set<string>();
    const marks = MILESTONES.map((m) => Math.round(m * jobs));
    const memory: Promise<MemorySample>[] = [];
    let allEnded!: () => void;
    const done = new Promise<void>((r) => (allEnded = r));
    const w = await states.watch({ key: ">" });
    const watching = (async () => {
      for await (const e of w) {
        if (e.operation !== "PUT") continue;
        const s = e.json<JobState>();
        last.set(s.id, s);
        if (!isTerminal(s.status) || ended.has(s.id)) continue;
        ended.add(s.id);
        if (marks.includes(ended.size)) {
          const n = ended.size;
          const r = rss;
          memory.push(
            heapAfterGc(pid, memDir).then((h) => ({
              jobsEnded: n,
              rss: r,
              ...(h ? { heapUsedAfterGc: h.heapUsed, rssAfterGc: h.rss } : {}),
            })),
          );
          progress(`load: ${n}/${jobs} jobs ended; coordinator RSS ${(r / 2 ** 20).toFixed(0)} MiB`);
        }
        if (ended.size === jobs) allEnded();
      }
    })();

    // Submit every job as fast as NATS takes them.
    progress(`load: submitting ${jobs} jobs (1-2 prompts, ${MAX_TOKENS} tokens each)`);
    const tSubmit = performance.now();
    let next = 0;
    let prompts = 0;
    await Promise.all(
      Array.from({ length: SUBMIT_CONCURRENCY }, async () => {
        for (let i = next++; i < jobs; i = next++) {
          const n = 1 + (i % 2);
          prompts += n;
          const input = Array.from({ length: n }, (_, k) =>
            JSON.stringify({ id: `p${k}`, prompt: STORY_OPENINGS[(i + k) % STORY_OPENINGS.length] }),
          ).join("\n");
          await store!.submit({
            jobId: `load-${String(i).padStart(5, "0")}`,
            input: enc.encode(input + "\n"),
            sampling: { maxTokens: MAX_TOKENS, temperature: 0.8 },
          });
        }
      }),
    );
    const submitSeconds = (performance.now() - tSubmit) / 1000;
    const queuedAfterSubmit = [...last.values()].filter((s) => s.status === "queued").length;
    progress(`load: ${jobs} jobs submitted in ${submitSeconds.toFixed(1)} s; ${queuedAfterSubmit} still queued`);

    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`load: only ${ended.size}/${jobs} jobs ended in 10 min`)), 600_000).unref(),
    );
    await Promise.race([done, timeout]);
    w.stop();
    await watching;
    const samples = await Promise.all(memory);
    clearInterval(sampler);
    sampler = undefined;

    const finals = [...last.values()];
    const ms = (a: string, b: string) => (Date.parse(b) - Date.parse(a)) / 1000;
    const wait = finals.filter((s) => s.startedAt).map((s) => ms(s.submittedAt, s.startedAt!));
    const run = finals.filter((s) => s.startedAt && s.finishedAt).map((s) => ms(s.startedAt!, s.finishedAt!));
    wait.sort((a, b) => a - b);
    run.sort((a, b) => a - b);
    const firstStart = Math.min(...finals.filter((s) => s.startedAt).map((s) => Date.parse(s.startedAt!)));
    const lastFinish = Math.max(...finals.filter((s) => s.finishedAt).map((s) => Date.parse(s.finishedAt!)));
    return {
      jobs,
      prompts,
      queuedAfterSubmit,
      submitSeconds,
      completed: finals.filter((s) => s.status === "completed").length,
      failed: finals.filter((s) => s.status !== "completed").length,
      jobsPerSecond: finals.length / ((lastFinish - firstStart) / 1000),
      completionTokens: finals.reduce((n, s) => n + s.completionTokens, 0),
      queueWait: { p50: quantile(wait, 0.5), p99: quantile(wait, 0.99) },
      runTime: { p50: quantile(run, 0.5), p99: quantile(run, 0.99) },
      memory: samples.sort((a, b) => a.jobsEnded - b.jobsEnded),
      peakRss,
      wallSeconds: (performance.now() - t0) / 1000,
    };
  } finally {
    if (sampler) clearInterval(sampler);
    await cluster?.stop();
    await store?.destroy();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => false);
    await nc.close();
    await rm(memDir, { recursive: true, force: true });
  }
}

const mib = (x: number | undefined) => (x === undefined ? "" : `${(x / 2 ** 20).toFixed(1)} MiB`);
const s = (x: number) => (x < 1 ? `${(1000 * x).toFixed(0)} ms` : `${x.toFixed(2)} s`);

/** Prints the load bench's Markdown table and notes. */
export function printLoad(r: LoadResult): void {
  const at = (share: number) => r.memory.find((m) => m.jobsEnded === Math.round(share * r.jobs));
  const base = at(0.25);
  const end = at(1);
  const rssRatio = base && end ? end.rss / base.rss : NaN;
  const heapRatio = base?.heapUsedAfterGc && end?.heapUsedAfterGc ? end.heapUsedAfterGc / base.heapUsedAfterGc : NaN;
  const rows: string[][] = [
    [
      "throughput",
      `${r.jobs} jobs (${r.prompts} prompts), ${r.completed} completed`,
      `${r.jobsPerSecond.toFixed(2)} jobs/s`,
      "",
    ],
    ["queue wait", "submittedAt → startedAt, p50 / p99", `${s(r.queueWait.p50)} / ${s(r.queueWait.p99)}`, ""],
    ["run time", "startedAt → finishedAt, p50 / p99", `${s(r.runTime.p50)} / ${s(r.runTime.p99)}`, ""],
    ...r.memory.map((m) => [
      "coordinator memory",
      `after ${m.jobsEnded} jobs: RSS; heap used / RSS after GC`,
      `${mib(m.rss)}; ${mib(m.heapUsedAfterGc)} / ${mib(m.rssAfterGc)}`,
      "",
    ]),
    [
      "does not grow",
      `RSS(${end?.jobsEnded}) ÷ RSS(${base?.jobsEnded})`,
      Number.isFinite(rssRatio) ? rssRatio.toFixed(2) : "",
      "(reported)",
    ],
    [
      "does not grow",
      `heap after GC (${end?.jobsEnded}) ÷ (${base?.jobsEnded})`,
      Number.isFinite(heapRatio) ? heapRatio.toFixed(2) : "",
      Number.isFinite(heapRatio) ? `≤ 1.10: ${heapRatio <= 1.1 ? "yes" : "no"}` : "",
    ],
  ];
  printFigureTable("load (bench/load.ts)", rows);
  console.log(
    `- ${r.jobs} jobs submitted in ${r.submitSeconds.toFixed(1)} s (${SUBMIT_CONCURRENCY} at once), ` +
      `${r.queuedAfterSubmit} still queued when the last submit returned; ${r.failed} not completed; ` +
      `${r.completionTokens} tokens generated (max_tokens ${MAX_TOKENS}, temperature 0.8)`,
  );
  console.log(`- coordinator peak RSS ${mib(r.peakRss)}; total ${r.wallSeconds.toFixed(0)} s`);
}
