/**
 * Issue 14, item 5: the vLLM-named serving metrics (serving-metrics.ts).
 * A local cluster (gpu-node, memory-node and coordinator on loopback gRPC
 * ports, in this process) with this process's Prometheus endpoint
 * (startMetrics, port 0). One Generate of prompts that finish by length, by
 * stop and in error (a prompt over the context), then one cancelled after
 * its first Result; each time /metrics is scraped over HTTP and its
 * per-model series checked against what the runs reported: prompt and
 * generation tokens exactly, requests by finished_reason, one end-to-end
 * latency per request, one queue time per admitted request, one time to
 * first token per request that sampled, an inter-token latency per
 * completion token after a request's first, and nothing left running,
 * waiting or holding KV cache.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { GenerateRequestSchema, type GenerateEvent, type Result } from "@tessera/proto";
import { startMetrics } from "@tessera/telemetry";
import { startInProcessCluster, STORY_OPENINGS } from "@tessera/testing";
import { one, scrape, type Sample } from "./prometheus.js";

/** The value of the one sample `tessera_<name>` with `labels`. */
function metric(samples: Sample[], name: string, labels: Record<string, string>): number {
  return one(samples, `tessera_${name}`, labels).value;
}

/** Counts `results` as request_success counts them: errors after `abortedAfter` results are aborts. */
function expectedReasons(results: readonly Result[], prompts: number, abortedAfter = Infinity) {
  const counts = { stop: 0, length: 0, abort: 0, error: 0 };
  results.forEach((r, i) => {
    const reason = r.finishReason === "error" && i >= abortedAfter ? "abort" : r.finishReason;
    counts[reason as keyof typeof counts]++;
  });
  counts.abort += prompts - results.length;
  return counts;
}

test("the serving metrics count a run's tokens, finishes and latencies per model exactly", async (t) => {
  const metrics = await startMetrics({
    serviceName: "tessera-coordinator",
    role: "coordinator",
    nodeId: "c1",
    port: 0,
  });
  t.after(() => metrics.shutdown());
  const cluster = await startInProcessCluster(t, { coordinator: { maxBatchSequences: 2 } });
  const model = cluster.coordinator.options.models[0]!.name;
  const labels = { model_name: model, otel_scope_name: "@tessera/coordinator" };

  // Before any request: every series of the served model exists, at 0.
  let s = await scrape(metrics.url);
  for (const name of ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"]) {
    assert.equal(metric(s, name, labels), 0, name);
  }
  assert.equal(metric(s, "prompt_tokens_total", labels), 0);
  assert.equal(metric(s, "request_success_total", { ...labels, finished_reason: "stop" }), 0);

  const run = async (prompts: { id: string; prompt: string; maxTokens: number }[], abortOnResult = false) => {
    const abort = new AbortController();
    const results: Result[] = [];
    let abortedAfter = Infinity;
    let summaryPromptTokens = 0;
    let midRun: Sample[] | undefined;
    const scraping: Promise<void>[] = [];
    const emit = (e: { event?: GenerateEvent["event"] }) => {
      const ev = e.event;
      if (ev?.case === "result") {
        results.push(ev.value as Result);
        if (abortOnResult && abortedAfter === Infinity) {
          abortedAfter = results.length;
          abort.abort();
        }
      }
      if (ev?.case === "progress" && ev.value.tokensGenerated > 0n && midRun === undefined && !abortOnResult) {
        // A scrape while the job decodes: its prompts run or wait, their KV caches open.
        midRun = [];
        scraping.push(scrape(metrics.url).then((x) => void (midRun = x)));
      }
      if (ev?.case === "summary") summaryPromptTokens = Number(ev.value.promptTokens);
    };
    await cluster.coordinator
      .generate(create(GenerateRequestSchema, { prompts, sampling: { temperature: 0 } }), {
        signal: abort.signal,
        emit,
      })
      .catch((err: unknown) => assert.ok(abortOnResult, `Generate failed: ${(err as Error).message}`));
    await Promise.all(scraping);
    return { results, abortedAfter, summaryPromptTokens, midRun };
  };

  // A prompt over the model's 512 positions is an error Result; the others finish by length or stop.
  const long = Array.from({ length: 200 }, () => "once upon a time").join(" ");
  const first = await run([
    { id: "short", prompt: STORY_OPENINGS[0]!, maxTokens: 5 },
    { id: "story", prompt: STORY_OPENINGS[1]!, maxTokens: 500 },
    { id: "tale", prompt: STORY_OPENINGS[2]!, maxTokens: 12 },
    { id: "long", prompt: long, maxTokens: 4 },
  ]);
  assert.equal(first.results.length, 4);
  assert.equal(first.results.find((r) => r.id === "long")!.finishReason, "error");
  assert.equal(first.results.find((r) => r.id === "short")!.finishReason, "length");
  const sampled = first.results.filter((r) => r.finishReason !== "error");
  const promptTokens = sampled.reduce((n, r) => n + r.promptTokenIds.length, 0);
  const generated = first.results.reduce((n, r) => n + r.completionTokenIds.length, 0);
  const itl = sampled.reduce((n, r) => n + Math.max(0, r.completionTokenIds.length - 1), 0);
  assert.ok(first.midRun, "scraped mid-run");
  // The too-long prompt finished before the first step; "story" (500 tokens) runs long after it.
  const mid = first.midRun;
  const midRunning = metric(mid, "num_requests_running", labels);
  const midTotal = midRunning + metric(mid, "num_requests_waiting", labels);
  assert.ok(midTotal >= 1 && midTotal <= 3 && midRunning >= 1, `running ${midRunning}, + waiting ${midTotal} mid-run`);
  // Its KV usage: the bytes its open sequences hold, at most what the memory-node holds (closes lag), of its capacity.
  const node = { tessera_address: cluster.memories[0]!.address };
  const nodeUse = metric(mid, "kv_used_bytes", node) / metric(mid, "kv_capacity_bytes", node);
  const kvUsage = metric(mid, "kv_cache_usage_perc", labels);
  assert.ok(kvUsage > 0 && kvUsage <= nodeUse + 1e-12, `kv_cache_usage_perc ${kvUsage}, node ${nodeUse}`);
  assert.equal(
    first.summaryPromptTokens,
    promptTokens + first.results.find((r) => r.id === "long")!.promptTokenIds.length,
  );

  s = await scrape(metrics.url);
  assert.equal(metric(s, "prompt_tokens_total", labels), promptTokens);
  assert.equal(metric(s, "generation_tokens_total", labels), generated);
  const reasons = expectedReasons(first.results, 4);
  assert.equal(reasons.error, 1);
  for (const [reason, n] of Object.entries(reasons)) {
    assert.equal(metric(s, "request_success_total", { ...labels, finished_reason: reason }), n, reason);
  }
  assert.equal(metric(s, "e2e_request_latency_seconds_count", labels), 4);
  assert.equal(metric(s, "request_queue_time_seconds_count", labels), 3, "the too-long prompt was never admitted");
  assert.equal(metric(s, "time_to_first_token_seconds_count", labels), 3);
  assert.equal(metric(s, "inter_token_latency_seconds_count", labels), itl);
  assert.equal(metric(s, "time_per_output_token_seconds_count", labels), itl);
  assert.equal(metric(s, "e2e_request_latency_seconds_bucket", { ...labels, le: "+Inf" }), 4);
  assert.equal(metric(s, "request_generation_tokens_sum", labels), generated);
  const allPromptTokens = first.results.reduce((n, r) => n + r.promptTokenIds.length, 0);
  assert.equal(metric(s, "request_prompt_tokens_sum", labels), allPromptTokens);
  assert.equal(metric(s, "request_prompt_tokens_count", labels), 4);
  for (const name of ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"]) {
    assert.equal(metric(s, name, labels), 0, name);
  }
  // Tessera's own figures stay: the same tokens.
  assert.equal(one(s, "tessera_tokens_generated_total", { otel_scope_name: "@tessera/coordinator" }).value, generated);

  // A second batch cancelled at its first Result: the rest are aborts, and every request is counted once.
  const prompts = Array.from({ length: 6 }, (_, i) => ({
    id: `c${i}`,
    prompt: STORY_OPENINGS[i % STORY_OPENINGS.length]!,
    maxTokens: i === 0 ? 2 : 200,
  }));
  const second = await run(prompts, true);
  s = await scrape(metrics.url);
  const after = expectedReasons(second.results, prompts.length, second.abortedAfter);
  assert.ok(after.abort >= 1, `some requests aborted: ${JSON.stringify(after)}`);
  for (const [reason, n] of Object.entries(after)) {
    const total = n + reasons[reason as keyof typeof reasons];
    assert.equal(metric(s, "request_success_total", { ...labels, finished_reason: reason }), total, reason);
  }
  assert.equal(metric(s, "e2e_request_latency_seconds_count", labels), 4 + prompts.length);
  for (const name of ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"]) {
    assert.equal(metric(s, name, labels), 0, name);
  }
});
