/**
 * Tracing and metrics overhead (issue 6): decode tokens/s of the same
 * Generate (16 prompts x 256 tokens by default, greedy, the bundled
 * stories260K model) on an in-process cluster (coordinator, gpu-node and
 * memory-node in one process, real gRPC on loopback; one onnxruntime and one
 * attention thread) in several modes, each round of each mode in a fresh
 * worker process of this bench (a fresh SDK per process: restarting the
 * OpenTelemetry SDK inside one process does not export again; and two
 * processes of the same mode differ by several per cent on a busy 2-core
 * machine, so a process kept for all rounds of a mode would bias it):
 *
 * - `off`: no SDK registered, no metrics (the API's no-ops; the baseline);
 * - `trace64` / `trace16` / `trace1`: the OpenTelemetry Node SDK (startTelemetry, the
 *   OTEL_* defaults: batch span processor, OTLP/HTTP protobuf) exporting to
 *   a real OTLP/HTTP sink in this process, which decodes every
 *   ExportTraceServiceRequest and counts its spans, with
 *   TESSERA_TRACE_STEP_EVERY=64 (the default), 16 and 1 (every decode step);
 * - `sampled-none`: the same SDK and exporter, OTEL_TRACES_SAMPLER=always_off:
 *   no span recorded or exported, but the context manager, the propagator
 *   and the non-recording spans are there: the SDK's fixed cost;
 * - `metrics`: the Prometheus endpoint (startMetrics) on, scraped by this
 *   process every `scrapeEveryMs` during the round; scrape latency reported;
 * - `off2`: a second worker like `off` (an A/A control): its ratio to `off`
 *   is what two identical processes differ by on this machine, the noise
 *   floor the other ratios must be read against.
 *
 * Each worker is started and warmed up (two Generates) alone, then timed on
 * one Generate, then stopped; the rounds interleave the modes (off,
 * trace16, trace1, sampled-none, metrics, off2; then trace16, ..., off;
 * ...) so that load from other processes on the machine falls on every mode
 * alike. The worker flushes its spans before it answers, so the sink's count
 * is the round's own.
 */
import { fork, type ChildProcess } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

/** The modes a worker runs in. */
export const TRACING_MODES = ["off", "trace64", "trace16", "trace1", "sampled-none", "metrics", "off2"] as const;
/** One of {@link TRACING_MODES}. */
export type TracingMode = (typeof TRACING_MODES)[number];

/** One round of one mode. */
export interface TracingRound {
  mode: TracingMode;
  round: number;
  /** Decode tokens/s the coordinator reported (Summary.decode_tokens_per_second). */
  decodeTokensPerSecond: number;
  /** Completion tokens of the round. */
  completionTokens: number;
  /**
   * CPU seconds (user + system, all threads) the worker process spent on the
   * round's Generate and span flush: the whole cluster's work, which other
   * processes' load hardly changes, unlike tokens/s.
   */
  cpuSeconds: number;
  /** Spans the sink received for this round (0 for off and metrics). */
  spans: number;
  /** OTLP export requests the sink received for this round. */
  exportRequests: number;
  /** Scrape round trips during the round, ms (metrics mode only). */
  scrapeMs: number[];
}

/** What {@link runTracingBench} measured. */
export interface TracingBench {
  prompts: number;
  maxTokens: number;
  rounds: TracingRound[];
  /** Bytes of the last scrape (metrics mode). */
  scrapeBytes: number;
  /** 1-minute load average at the start and at the end (os.loadavg). */
  loadBefore: number;
  loadAfter: number;
}

/** The fields of opentelemetry-proto's ExportTraceServiceRequest needed to count spans (spans kept as bytes). */
const COUNT_PROTO = `
syntax = "proto3";
message ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
message ResourceSpans { repeated ScopeSpans scope_spans = 2; }
message ScopeSpans { repeated bytes spans = 2; }
`;
const ExportTraceServiceRequest = protobuf.parse(COUNT_PROTO).root.lookupType("ExportTraceServiceRequest");

interface DecodedRequest {
  resourceSpans?: { scopeSpans?: { spans?: Uint8Array[] }[] }[];
}

/** An OTLP/HTTP receiver on a loopback port that counts the spans of POST /v1/traces. */
async function startSink(): Promise<{
  endpoint: string;
  stats: { requests: number; spans: number };
  close(): Promise<void>;
}> {
  const stats = { requests: 0, spans: 0 };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.url === "/v1/traces") {
        const msg = ExportTraceServiceRequest.decode(Buffer.concat(chunks)) as unknown as DecodedRequest;
        stats.requests++;
        for (const rs of msg.resourceSpans ?? [])
          for (const ss of rs.scopeSpans ?? []) stats.spans += ss.spans?.length ?? 0;
      }
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stats,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

// ---- worker side (a child process of this bench) ----

/** Parent -> worker. */
type Command = { type: "round" } | { type: "exit" };
/** Worker -> parent. */
type Reply =
  | { type: "ready"; metricsUrl?: string }
  | { type: "done"; decodeTokensPerSecond: number; completionTokens: number; cpuSeconds: number }
  | { type: "error"; message: string };

async function worker(mode: TracingMode, prompts: number, maxTokens: number): Promise<void> {
  const send = (r: Reply) => process.send!(r);
  try {
    const { serveMetrics, startTelemetry } = await import("@tessera/telemetry");
    const { generate, STORY_OPENINGS, bundled } = await import("@tessera/testing");
    const { createGpuNode } = await import("@tessera/gpu-node");
    const { createMemoryNode } = await import("@tessera/memory-node");
    const { createCoordinator } = await import("@tessera/coordinator");
    const who = { serviceName: `tessera-bench-${mode}`, role: "bench", nodeId: `bench-${mode}` };
    const metrics = await serveMetrics(who); // on only where the parent set TESSERA_METRICS_PORT
    const telemetry = await startTelemetry(who); // on only where the parent set the OTLP endpoint
    // One thread each for onnxruntime and attention: no spinning pool threads
    // whose share of 2 busy cores would differ from one worker process to the next.
    const gpu = createGpuNode({ port: 0, intraOpThreads: 1 });
    const memory = createMemoryNode({ port: 0, attentionThreads: 1 });
    await Promise.all([gpu.start(), memory.start()]);
    const coordinator = createCoordinator({
      gpuNodes: [gpu.address],
      memoryNodes: [memory.address],
      modelPath: bundled.model,
      tokenizerPath: bundled.tokenizer,
      log: () => {},
    });
    await coordinator.start();
    const cluster = { address: coordinator.address };
    const request = {
      prompts: Array.from({ length: prompts }, (_, i) => ({
        id: `p${i}`,
        prompt: STORY_OPENINGS[i % STORY_OPENINGS.length]!,
      })),
      sampling: { maxTokens, temperature: 0 },
    };
    const once = async () => {
      const cpu0 = process.cpuUsage();
      const { summary } = await generate(cluster.address, request);
      // The round's spans reach the sink before the parent counts them.
      await telemetry.forceFlush();
      const cpu = process.cpuUsage(cpu0);
      return {
        cpuSeconds: (cpu.user + cpu.system) / 1e6,
        decodeTokensPerSecond: summary?.decodeTokensPerSecond ?? 0,
        completionTokens: Number(summary?.completionTokens ?? 0),
      };
    };
    // Warm-up: sessions created, caches allocated, the hot paths compiled.
    await once();
    await once();
    send({ type: "ready", ...(metrics ? { metricsUrl: metrics.url } : {}) });
    process.on("message", (c: Command) => {
      if (c.type === "round") {
        once().then(
          (r) => send({ type: "done", ...r }),
          (err: unknown) => send({ type: "error", message: (err as Error).message }),
        );
      } else {
        void (async () => {
          await coordinator.close();
          await Promise.all([gpu.close(), memory.close()]);
          await telemetry.shutdown();
          await metrics?.shutdown();
          process.exit(0);
        })();
      }
    });
  } catch (err) {
    send({ type: "error", message: (err as Error).stack ?? String(err) });
    process.exit(1);
  }
}

const WORKER_ENV = "TESSERA_BENCH_TRACING_WORKER";
if (process.env[WORKER_ENV]) {
  const [mode, prompts, maxTokens] = process.env[WORKER_ENV].split(",");
  void worker(mode as TracingMode, Number(prompts), Number(maxTokens));
}

// ---- parent side ----

interface Worker {
  mode: TracingMode;
  child: ChildProcess;
  metricsUrl?: string;
  next(): Promise<Reply>;
}

function startWorker(mode: TracingMode, env: NodeJS.ProcessEnv, prompts: number, maxTokens: number): Promise<Worker> {
  const child = fork(fileURLToPath(import.meta.url), [], {
    execArgv: ["--import", "tsx"],
    env: { ...env, [WORKER_ENV]: `${mode},${prompts},${maxTokens}` },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const queue: Reply[] = [];
  const waiting: ((r: Reply) => void)[] = [];
  child.on("message", (r: Reply) => {
    const w = waiting.shift();
    if (w) w(r);
    else queue.push(r);
  });
  child.on("exit", (code) => {
    for (const w of waiting.splice(0)) w({ type: "error", message: `worker ${mode} exited (${code})` });
  });
  const next = () =>
    new Promise<Reply>((resolve) => {
      const r = queue.shift();
      if (r) resolve(r);
      else waiting.push(resolve);
    });
  return next().then((r) => {
    if (r.type !== "ready")
      throw new Error(`bench/tracing.ts: worker ${mode}: ${r.type === "error" ? r.message : r.type}`);
    return { mode, child, next, ...(r.metricsUrl ? { metricsUrl: r.metricsUrl } : {}) };
  });
}

/**
 * Runs `rounds` interleaved rounds of every mode in `modes` (see the file
 * comment): `prompts` prompts x `maxTokens` tokens each, the metrics
 * endpoint scraped every `scrapeEveryMs` during metrics rounds.
 * @throws Error naming the mode when a worker fails.
 */
export async function runTracingBench(
  prompts = 16,
  maxTokens = 256,
  rounds = 9,
  modes: readonly TracingMode[] = TRACING_MODES,
  scrapeEveryMs = 1000,
): Promise<TracingBench> {
  const { loadavg } = await import("node:os");
  const loadBefore = loadavg()[0]!;
  const sink = await startSink();
  const base: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(base))
    if (/^(OTEL_|TESSERA_TRACE_STEP_EVERY$|TESSERA_METRICS_PORT$)/.test(k)) delete base[k];
  const envOf = (mode: TracingMode): NodeJS.ProcessEnv =>
    mode === "trace64" || mode === "trace16" || mode === "trace1" || mode === "sampled-none"
      ? {
          ...base,
          OTEL_EXPORTER_OTLP_ENDPOINT: sink.endpoint,
          OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
          TESSERA_TRACE_STEP_EVERY: mode === "trace1" ? "1" : mode === "trace16" ? "16" : "64",
          ...(mode === "sampled-none" ? { OTEL_TRACES_SAMPLER: "always_off" } : {}),
        }
      : mode === "metrics"
        ? { ...base, TESSERA_METRICS_PORT: "0" }
        : base;
  const live = new Set<Worker>();
  const stop = async (w: Worker) => {
    const exited =
      w.child.exitCode === null && w.child.signalCode === null
        ? new Promise<void>((resolve) => w.child.once("exit", () => resolve()))
        : Promise.resolve();
    if (w.child.connected) w.child.send({ type: "exit" } satisfies Command);
    await exited;
    live.delete(w);
  };
  const out: TracingRound[] = [];
  let scrapeBytes = 0;
  try {
    for (let round = 0; round < rounds; round++) {
      // Rotated each round, so that no mode always runs right after the same other one.
      for (const mode of [...modes.slice(round % modes.length), ...modes.slice(0, round % modes.length)]) {
        // A fresh process per mode and round (started and warmed up alone):
        // what differs between two processes of the same mode (the A/A
        // control off2 shows it) is spread over the rounds, not fixed to a mode.
        const w = await startWorker(mode, envOf(mode), prompts, maxTokens);
        live.add(w);
        const before = { ...sink.stats };
        const scrapeMs: number[] = [];
        let scraping = true;
        const scraper = (async () => {
          if (!w.metricsUrl) return;
          while (scraping) {
            const t0 = performance.now();
            const body = await (await fetch(w.metricsUrl)).text();
            scrapeMs.push(performance.now() - t0);
            scrapeBytes = body.length;
            await new Promise((r) => setTimeout(r, scrapeEveryMs));
          }
        })();
        w.child.send({ type: "round" } satisfies Command);
        const r = await w.next();
        scraping = false;
        await scraper;
        if (r.type !== "done")
          throw new Error(`bench/tracing.ts: worker ${w.mode}: ${r.type === "error" ? r.message : r.type}`);
        out.push({
          mode: w.mode,
          round,
          decodeTokensPerSecond: r.decodeTokensPerSecond,
          completionTokens: r.completionTokens,
          cpuSeconds: r.cpuSeconds,
          spans: sink.stats.spans - before.spans,
          exportRequests: sink.stats.requests - before.requests,
          scrapeMs,
        });
        process.stderr.write(
          `tracing bench: round ${round} ${w.mode}: ${r.decodeTokensPerSecond.toFixed(1)} tok/s, ${sink.stats.spans - before.spans} spans\n`,
        );
        await stop(w);
      }
    }
  } finally {
    await Promise.all([...live].map(stop));
    await sink.close();
  }
  return { prompts, maxTokens, rounds: out, scrapeBytes, loadBefore, loadAfter: loadavg()[0]! };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * Per mode: the median over rounds of (its decode tok/s ÷ the off mode's in
 * the same round), the paired ratio, which cancels load that drifts over the
 * run; 1 for off, NaN without off rounds.
 */
export function pairedRatio(b: TracingBench, mode: TracingMode): number {
  const ratios: number[] = [];
  for (const r of b.rounds) {
    if (r.mode !== mode) continue;
    const off = b.rounds.find((o) => o.mode === "off" && o.round === r.round);
    if (off && off.decodeTokensPerSecond > 0) ratios.push(r.decodeTokensPerSecond / off.decodeTokensPerSecond);
  }
  return ratios.length ? median(ratios) : NaN;
}

/** CPU ms per 1,000 completion tokens of a round. */
const cpuPerKtok = (r: TracingRound) => (r.cpuSeconds * 1e6) / Math.max(1, r.completionTokens);

/** Prints per mode the median decode tok/s, its ratios to off, spans per round and scrape latency. */
export function printTracingBench(b: TracingBench): void {
  const rounds = Math.max(...b.rounds.map((r) => r.round)) + 1;
  console.log(
    `\ntracing and metrics overhead (bench/tracing.ts): ${b.prompts} prompts x ${b.maxTokens} tokens, ` +
      `${rounds} interleaved rounds, median decode tok/s; load average ${b.loadBefore.toFixed(2)} -> ${b.loadAfter.toFixed(2)}`,
  );
  const off = median(b.rounds.filter((r) => r.mode === "off").map((r) => r.decodeTokensPerSecond));
  console.log(
    "| mode | decode tok/s (median) | min..max | median ÷ off median | paired ratio (median) | CPU ms / 1k tokens (median) | ÷ off | spans/round | OTLP requests/round | scrape ms (median, max) |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  const offCpu = median(b.rounds.filter((r) => r.mode === "off").map(cpuPerKtok));
  for (const mode of TRACING_MODES) {
    const rs = b.rounds.filter((r) => r.mode === mode);
    if (rs.length === 0) continue;
    const tps = rs.map((r) => r.decodeTokensPerSecond);
    const scrapes = rs.flatMap((r) => r.scrapeMs);
    console.log(
      `| ${mode} | ${median(tps).toFixed(1)} | ${Math.min(...tps).toFixed(1)}..${Math.max(...tps).toFixed(1)} | ` +
        `${off > 0 ? (median(tps) / off).toFixed(3) : ""} | ${pairedRatio(b, mode).toFixed(3)} | ` +
        `${median(rs.map(cpuPerKtok)).toFixed(1)} | ${(median(rs.map(cpuPerKtok)) / offCpu).toFixed(3)} | ` +
        `${rs.map((r) => r.spans).join(",")} | ` +
        `${rs.map((r) => r.exportRequests).join(",")} | ` +
        `${scrapes.length ? `${median(scrapes).toFixed(2)}, ${Math.max(...scrapes).toFixed(2)} (${scrapes.length} scrapes, ${b.scrapeBytes} B)` : ""} |`,
    );
  }
}
