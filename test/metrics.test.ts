/**
 * Issue 6, metrics: a local cluster of child processes (coordinator with its
 * NATS job worker on the real server at 127.0.0.1:4222, gpu-, memory- and
 * storage-node), each started with TESSERA_METRICS_PORT=0, serves a
 * Prometheus endpoint on a port the OS chose (read from the "metrics at"
 * line each writes to stderr). After one Generate (one prompt's KV on the
 * memory-node, one on the storage-node) every endpoint is scraped over HTTP
 * and its series checked against what the Generate reported: generated
 * tokens exactly, one step-latency observation per step on both sides of
 * the coordinator -> gpu-node hop, KV capacity as configured and nothing
 * left reserved, the job queue empty, and the job's $/Mtok from its plan's
 * price and wall time; and the served model's vLLM-named serving series
 * (issue 14) with the same tokens and finishes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { JobStore, connectNats } from "@tessera/nats";
import { KvPlacement } from "@tessera/proto";
import { generate, STORY_OPENINGS } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";
import { one, scrape } from "./prometheus.js";
import { ALL_ROLES, type AttentionRole } from "@tessera/core";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const MEMORY_CAPACITY = 64 * 1024 ** 2;
const STORAGE_CAPACITY = 256 * 1024 ** 2;
const PRICES = { gpu: 2.5, memory: 0.25, storage: 0.05 };

test("every service serves Prometheus metrics that match a Generate's tokens, steps, KV and cost", async (t) => {
  const prefix = `m${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "metrics-test" });
  t.after(async () => {
    // The coordinator's job worker made the queue: remove it.
    const store = await JobStore.open(nc, { prefix });
    await store.destroy();
    await nc.close();
  });
  const saved = process.env.TESSERA_METRICS_PORT;
  process.env.TESSERA_METRICS_PORT = "0"; // children copy it: each gets a free port
  const cluster = await startTestCluster({
    flags: {
      coordinator: ["--nats", SERVERS, "--nats-prefix", prefix, "--max-batch", "4"],
      gpu: ["--price", String(PRICES.gpu)],
      memory: ["--capacity", String(MEMORY_CAPACITY), "--price", String(PRICES.memory)],
      storage: ["--capacity", String(STORAGE_CAPACITY), "--price", String(PRICES.storage)],
    },
  }).finally(() => {
    if (saved === undefined) delete process.env.TESSERA_METRICS_PORT;
    else process.env.TESSERA_METRICS_PORT = saved;
  });
  t.after(() => cluster.stop());
  const roles = ALL_ROLES;
  const urls = Object.fromEntries(
    roles.map((role) => {
      const m = /metrics at (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(cluster.node(role).logTail());
      assert.ok(m, `${role}: no "metrics at" line in its log:\n${cluster.node(role).logTail()}`);
      return [role, m[1]!];
    }),
  ) as Record<(typeof roles)[number], string>;
  assert.equal(new Set(Object.values(urls)).size, 4, "four different ports");

  const out = await generate(cluster.address, {
    prompts: [
      { id: "m", prompt: STORY_OPENINGS[0]!, kv: KvPlacement.MEMORY },
      { id: "s", prompt: STORY_OPENINGS[1]!, kv: KvPlacement.STORAGE },
    ],
    sampling: { maxTokens: 24, temperature: 0 },
  });
  const summary = out.summary!;
  assert.equal(summary.errors, 0);
  const generated = [...out.results.values()].reduce((n, r) => n + r.completionTokenIds.length, 0);
  assert.equal(Number(summary.completionTokens), generated);
  assert.ok(generated > 0);

  // Coordinator: tokens, steps per stage, batch slots, the job queue, $/Mtok.
  const c = await scrape(urls.coordinator);
  const scope = { otel_scope_name: "@tessera/coordinator", tessera_role: "coordinator" };
  const tokens = one(c, "tessera_tokens_generated_total", scope);
  assert.equal(tokens.value, generated);
  assert.match(tokens.labels.tessera_node_id ?? "", /./);
  const stepCount = (stage: string) =>
    one(c, "tessera_step_duration_seconds_count", { ...scope, tessera_stage: stage }).value;
  const decodeSteps = stepCount("decode");
  const prefillSteps = stepCount("prefill");
  assert.equal(decodeSteps, summary.decodeBreakdown!.steps);
  assert.ok(prefillSteps >= 1);
  const le = one(c, "tessera_step_duration_seconds_bucket", { tessera_stage: "decode", le: "+Inf" });
  assert.equal(le.value, decodeSteps);
  assert.equal(one(c, "tessera_batch_slots_in_use", scope).value, 0);
  // The vLLM-named serving series of the served model (issue 14; test/serving-metrics.test.ts has the rest).
  const served = { ...scope, model_name: "stories260K" };
  assert.equal(one(c, "tessera_generation_tokens_total", served).value, generated);
  const promptTokens = [...out.results.values()].reduce((n, r) => n + r.promptTokenIds.length, 0);
  assert.equal(one(c, "tessera_prompt_tokens_total", served).value, promptTokens);
  const byReason = (reason: string) =>
    one(c, "tessera_request_success_total", { ...served, finished_reason: reason }).value;
  const reasons = [...out.results.values()].map((r) => r.finishReason);
  for (const reason of ["stop", "length", "abort", "error"]) {
    assert.equal(byReason(reason), reasons.filter((r) => r === reason).length, reason);
  }
  assert.equal(one(c, "tessera_e2e_request_latency_seconds_count", served).value, 2);
  assert.equal(one(c, "tessera_num_requests_running", served).value, 0);
  assert.equal(one(c, "tessera_num_requests_waiting", served).value, 0);
  for (const priority of ["high", "normal", "low"]) {
    assert.equal(one(c, "tessera_jobs_queued", { tessera_priority: priority }).value, 0);
    assert.equal(one(c, "tessera_jobs_running", { tessera_priority: priority }).value, 0);
  }
  const plan = summary.plan!;
  // The plan's price: the gpu-node and the attention nodes it put KV shares on.
  const kvRoles = new Set(plan.kvShares.map((k) => k.role as AttentionRole));
  const planPrice = PRICES.gpu + [...kvRoles].reduce((p, r) => p + PRICES[r], 0);
  assert.ok(Math.abs(plan.pricePerHour - planPrice) < 1e-12, `plan price ${plan.pricePerHour} != ${planPrice}`);
  assert.equal(one(c, "tessera_job_dollars_per_million_tokens_count", scope).value, 1);
  const expected = ((plan.pricePerHour / 3600) * summary.wallSeconds * 1e6) / generated;
  const cost = one(c, "tessera_job_dollars_per_million_tokens_sum", scope).value;
  assert.ok(Math.abs(cost - expected) <= 1e-9 * expected, `$/Mtok ${cost} != ${expected}`);

  // gpu-node: one observation per step and stage, the same steps the coordinator timed.
  const g = await scrape(urls.gpu);
  for (const stage of ["dense", "attention_wait", "total"]) {
    const labels = { otel_scope_name: "@tessera/gpu-node", tessera_role: "gpu", tessera_stage: stage };
    assert.equal(one(g, "tessera_gpu_step_seconds_count", labels).value, decodeSteps + prefillSteps, stage);
  }

  // Attention nodes: capacity as configured, nothing reserved once the job released its KV.
  for (const [role, capacity] of [
    ["memory", MEMORY_CAPACITY],
    ["storage", STORAGE_CAPACITY],
  ] as const) {
    const s = await scrape(urls[role]);
    const labels = { tessera_role: role, tessera_address: cluster.node(role).address };
    assert.equal(one(s, "tessera_kv_capacity_bytes", labels).value, capacity, role);
    assert.equal(one(s, "tessera_kv_used_bytes", labels).value, 0, role);
    assert.equal(one(s, "target_info", { tessera_role: role }).labels.service_name, `tessera-${role}-node`);
  }
  // Anything but GET /metrics is not found.
  assert.equal((await fetch(urls.memory.replace(/\/metrics$/, "/other"))).status, 404);
});
