/**
 * `node --import tsx bench/main.ts --only tenants` (also part of
 * `--only load`, `npm run bench:load`; issue 13, "Done when"): one tenant
 * sends the longest prompts the limits allow while another tenant's short
 * Generate calls run.
 *
 * Scenario: the local cluster (gpu-, memory-, storage-node and coordinator,
 * child processes on loopback gRPC) on the bundled stories260K, with
 * `--nats` (real NATS at $TESSERA_NATS, default 127.0.0.1:4222, random
 * prefix, deleted at the end: the nodes heartbeat into the registry, and a
 * coordinator that stops reading heartbeats declares them lost) and a
 * tokens file of two tenants. Tenant "light" makes {@link LIGHT_CALLS}
 * ({@link QUICK_LIGHT_CALLS} with --quick) Generate calls one after another,
 * one story opening each, {@link LIGHT_MAX_TOKENS} tokens at temperature 0:
 * first alone (unloaded), then while tenant "heavy" keeps
 * {@link HEAVY_CALLS} Generate calls in flight, each of as many prompts of
 * the limit's `maxPromptBytes` (64 KiB) of text as `maxRequestBytes` (64
 * MiB) holds ({@link QUICK_HEAVY_PROMPTS} with --quick: the issue's 50 x
 * 60 KB); the loaded round starts once the coordinator's
 * `tessera_tokenize_tasks{state="running"}` says heavy's prompts tokenise.
 * A health check of the coordinator runs every 100 ms throughout.
 *
 * Figures: light's call latency p50 / p99 unloaded and loaded and their
 * ratio (target: p99 within 2x); the health checks' slowest answer in each
 * round; nodes the coordinator declared lost (its `cluster: ... lost` log
 * lines); how long SIGTERM, sent while heavy's prompts tokenise, takes to
 * stop the coordinator process, against its grace period
 * (DEFAULT_SHUTDOWN_GRACE_MS); the 1-minute load average at the start and end.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { DEFAULT_SHUTDOWN_GRACE_MS } from "@tessera/core";
import { defaultGenerateLimits } from "@tessera/coordinator";
import { JobStore, connectNats, registryBucket } from "@tessera/nats";
import { Coordinator, checkHealth, createClient, type GenerateEvent } from "@tessera/proto";
import { STORY_OPENINGS, freePort, storyText } from "@tessera/testing";
import { bundled, startLocalCluster, type LocalCluster } from "@tessera/cli";
import { printFigureTable, progress, type BenchOptions } from "./common.js";

/** Light tenant's Generate calls per round (--quick: {@link QUICK_LIGHT_CALLS}). */
export const LIGHT_CALLS = 100;
export const QUICK_LIGHT_CALLS = 30;
/** Tokens each light call generates. */
export const LIGHT_MAX_TOKENS = 8;
/** Heavy tenant's Generate calls in flight at once. */
export const HEAVY_CALLS = 2;
/** Prompts of each heavy call with --quick (else as many as the request limit holds). */
export const QUICK_HEAVY_PROMPTS = 50;

/** What {@link runTenantLoad} measured; times in seconds. */
export interface TenantLoadResult {
  lightCalls: number;
  heavyPrompts: number;
  heavyPromptBytes: number;
  unloaded: { p50: number; p99: number; healthMax: number };
  loaded: { p50: number; p99: number; healthMax: number };
  /** Heavy calls that ended (all prompts answered) during the loaded round. */
  heavyEnded: number;
  /** The coordinator's "cluster: <role>-node <address> lost (...)" log lines, each with its time and phase. */
  lostLines: string[];
  sigtermSeconds: number;
  sigtermExitCode: number | null;
  graceSeconds: number;
  loadAvg: { start: number; end: number };
}

/** Value at quantile `q` of `xs` (nearest rank). */
function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

/** Reads a Generate stream to its end. */
async function drain(stream: AsyncIterable<GenerateEvent>): Promise<void> {
  const it = stream[Symbol.asyncIterator]();
  while (!(await it.next()).done);
}

/** Running/queued tokenise tasks from the coordinator's Prometheus text. */
async function tokenizeTasks(metricsPort: number, state: "queued" | "running"): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text());
  const m = new RegExp(`^tessera_tokenize_tasks\\{tessera_state="${state}"[^}]*\\} (\\d+)`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

/**
 * Runs the two-tenant scenario (see the file's comment).
 * @throws when the cluster does not start or a light call fails.
 */
export async function runTenantLoad(o: BenchOptions): Promise<TenantLoadResult> {
  const loadStart = loadavg()[0]!;
  const servers = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
  const prefix = `tenants${randomBytes(4).toString("hex")}`;
  const dir = await mkdtemp(join(tmpdir(), "tessera-tenants-"));
  const token = { heavy: randomBytes(16).toString("hex"), light: randomBytes(16).toString("hex") };
  const tokensFile = join(dir, "tokens.yaml");
  await writeFile(
    tokensFile,
    `tokens:\n  - { tenant: heavy, token: "${token.heavy}" }\n  - { tenant: light, token: "${token.light}" }\n`,
  );
  const L = defaultGenerateLimits;
  const promptBytes = L.maxPromptBytes;
  // Each prompt costs its text, its id and a few bytes of framing.
  const heavyPrompts = o.quick ? QUICK_HEAVY_PROMPTS : Math.floor((L.maxRequestBytes - 1024) / (promptBytes + 32));
  const lightCalls = o.quick ? QUICK_LIGHT_CALLS : LIGHT_CALLS;
  const longPrompt = storyText(promptBytes);
  const metricsPort = await freePort();
  const nc = await connectNats({ servers, name: "bench-tenants" });
  let cluster: LocalCluster | undefined;
  const clients: { close(): void }[] = [];
  const stopHeavy = new AbortController();
  try {
    progress(`tenants: starting the local cluster (stories260K, --nats ${servers}, prefix ${prefix}, two tenants)`);
    cluster = await startLocalCluster({
      model: bundled.model,
      tokenizer: bundled.tokenizer,
      nats: { servers, prefix },
      verbose: o.verbose,
      readyTimeoutMs: 120_000,
      flags: { coordinator: ["--tokens", tokensFile, "--metrics-port", String(metricsPort)] },
    });
    const coordinator = cluster.node("coordinator");
    const lostLines: string[] = [];
    let phase = "start";
    const tStart = performance.now();
    coordinator.child.stderr!.on("data", (chunk: string) => {
      for (const line of chunk.split("\n")) {
        if (!/^cluster: \S+ \S+ lost/.test(line)) continue;
        lostLines.push(`${((performance.now() - tStart) / 1000).toFixed(1)} s, ${phase}: ${line}`);
      }
    });
    const clientOf = (t: string) => {
      const c = createClient(Coordinator, cluster!.address, {}, { token: t });
      clients.push(c);
      return c;
    };
    const light = clientOf(token.light);
    const heavy = clientOf(token.heavy);

    // Health checks all along; each round takes the slowest answer of its span.
    const health: { at: number; seconds: number }[] = [];
    let checking = true;
    const checker = (async () => {
      while (checking) {
        const t0 = performance.now();
        await checkHealth(cluster!.address, "tessera.v1.Coordinator", 10_000).catch(() => undefined);
        health.push({ at: t0, seconds: (performance.now() - t0) / 1000 });
        await sleep(100);
      }
    })();
    const healthMax = (from: number, to: number) =>
      Math.max(0, ...health.filter((h) => h.at >= from && h.at <= to).map((h) => h.seconds));

    const round = async (name: string) => {
      const times: number[] = [];
      const from = performance.now();
      for (let i = 0; i < lightCalls; i++) {
        const t0 = performance.now();
        const stream = light.generate({
          prompts: [{ id: `l${i}`, prompt: STORY_OPENINGS[i % STORY_OPENINGS.length]! }],
          sampling: { maxTokens: LIGHT_MAX_TOKENS, temperature: 0 },
        }) as AsyncIterable<GenerateEvent>;
        for await (const ev of stream) {
          if (ev.event.case === "result" && ev.event.value.finishReason === "error") {
            throw new Error(`tenants: light call ${i}: ${ev.event.value.error}`);
          }
        }
        times.push((performance.now() - t0) / 1000);
      }
      const r = {
        p50: quantile(times, 0.5),
        p99: quantile(times, 0.99),
        healthMax: healthMax(from, performance.now()),
      };
      progress(`tenants: ${name}: light p50 ${r.p50.toFixed(3)} s, p99 ${r.p99.toFixed(3)} s`);
      return r;
    };

    progress(`tenants: unloaded round (${lightCalls} light calls)`);
    await drain(light.generate({ prompts: [{ id: "warm", prompt: "Once" }], sampling: { maxTokens: 1 } }));
    phase = "unloaded round";
    const unloaded = await round("unloaded");
    phase = "heavy starting";

    progress(`tenants: heavy sends ${HEAVY_CALLS} calls at a time of ${heavyPrompts} prompts x ${promptBytes} bytes`);
    let heavyEnded = 0;
    const request = {
      prompts: Array.from({ length: heavyPrompts }, (_, i) => ({ id: `h${i}`, prompt: longPrompt })),
      sampling: { maxTokens: 4 },
    };
    const heavyLoops = Array.from({ length: HEAVY_CALLS }, async () => {
      while (!stopHeavy.signal.aborted) {
        try {
          await drain(heavy.generate(request, { signal: stopHeavy.signal }));
          heavyEnded++;
        } catch {
          if (!stopHeavy.signal.aborted) await sleep(100);
        }
      }
    });
    while ((await tokenizeTasks(metricsPort, "running")) === 0) await sleep(50);
    phase = "loaded round";
    const loaded = await round("loaded");
    phase = "after the loaded round";
    const ended = heavyEnded;

    // SIGTERM while heavy's prompts tokenise.
    while ((await tokenizeTasks(metricsPort, "running")) === 0) await sleep(50);
    checking = false;
    await checker;
    progress("tenants: SIGTERM to the coordinator while heavy's prompts tokenise");
    const exited = new Promise<number | null>((resolve) => coordinator.child.once("exit", (code) => resolve(code)));
    const t0 = performance.now();
    phase = "SIGTERM";
    coordinator.child.kill("SIGTERM");
    const sigtermExitCode = await exited;
    const sigtermSeconds = (performance.now() - t0) / 1000;
    stopHeavy.abort();
    await Promise.allSettled(heavyLoops);
    return {
      lightCalls,
      heavyPrompts,
      heavyPromptBytes: promptBytes,
      unloaded,
      loaded,
      heavyEnded: ended,
      lostLines,
      sigtermSeconds,
      sigtermExitCode,
      graceSeconds: DEFAULT_SHUTDOWN_GRACE_MS / 1000,
      loadAvg: { start: loadStart, end: loadavg()[0]! },
    };
  } finally {
    stopHeavy.abort();
    for (const c of clients) c.close();
    await cluster?.stop();
    const store = await JobStore.open(nc, { prefix }).catch(() => undefined);
    await store?.destroy();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => false);
    await nc.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const sec = (x: number) => (x < 1 ? `${(1000 * x).toFixed(0)} ms` : `${x.toFixed(2)} s`);

/** Prints the two-tenant bench's Markdown table and notes. */
export function printTenantLoad(r: TenantLoadResult): void {
  const ratio = r.loaded.p99 / r.unloaded.p99;
  const rows: string[][] = [
    ["light latency, unloaded", "p50 / p99", `${sec(r.unloaded.p50)} / ${sec(r.unloaded.p99)}`, ""],
    ["light latency, loaded", "p50 / p99", `${sec(r.loaded.p50)} / ${sec(r.loaded.p99)}`, ""],
    ["loaded ÷ unloaded", "p99", ratio.toFixed(2), `≤ 2: ${ratio <= 2 ? "yes" : "no"}`],
    ["loaded ÷ unloaded", "p50", (r.loaded.p50 / r.unloaded.p50).toFixed(2), "(reported)"],
    [
      "health check",
      "slowest answer, unloaded / loaded",
      `${sec(r.unloaded.healthMax)} / ${sec(r.loaded.healthMax)}`,
      "",
    ],
    [
      "nodes declared lost",
      "coordinator log",
      String(r.lostLines.length),
      `0: ${r.lostLines.length === 0 ? "yes" : "no"}`,
    ],
    [
      "SIGTERM under load",
      `time to exit (code ${r.sigtermExitCode}) vs grace`,
      `${sec(r.sigtermSeconds)} / ${sec(r.graceSeconds)}`,
      `within grace: ${r.sigtermSeconds <= r.graceSeconds ? "yes" : "no"}`,
    ],
  ];
  printFigureTable("two tenants (bench/tenant-load.ts)", rows);
  console.log(
    `- light: ${r.lightCalls} Generate calls per round, one story opening, ${LIGHT_MAX_TOKENS} tokens; ` +
      `heavy: ${HEAVY_CALLS} calls in flight of ${r.heavyPrompts} prompts x ${r.heavyPromptBytes} bytes ` +
      `(${r.heavyEnded} ended during the loaded round)`,
  );
  for (const l of r.lostLines) console.log(`- lost: ${l}`);
  console.log(
    `- load average (1 min): ${r.loadAvg.start.toFixed(2)} at the start, ${r.loadAvg.end.toFixed(2)} at the end`,
  );
}
