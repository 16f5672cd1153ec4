/**
 * The serving metrics' bookkeeping (serving-metrics.ts), scraped from this
 * process's real Prometheus endpoint: which sequence states count as
 * running or waiting, the KV usage fraction (reserved bytes of open shards
 * over the KV nodes' capacity; no sample while the capacity is unknown),
 * and the finished_reason of requests that end with the job: an "error"
 * after the job was cancelled is an "abort", prompts never finished count
 * at end() as "abort" (cancelled) or "error" (failed), once.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startMetrics } from "@tessera/telemetry";
import { createSequence, finished, SequenceState, type Sequence, type Shard } from "../src/engine/sequence.js";
import { noteKvCapacity, serveModelMetrics, trackRequests } from "../src/serving-metrics.js";

const node = { address: "127.0.0.1:1", role: "memory" as const };

/** Prometheus samples of `name` with model_name `model`, by their other labels' JSON. */
async function read(url: string, name: string, model: string): Promise<Map<string, number>> {
  const text = await (await fetch(url)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^(\w+)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name || !m[2]!.includes(`model_name="${model}"`)) continue;
    const reason = /finished_reason="(\w+)"/.exec(m[2]!)?.[1] ?? "";
    out.set(reason, Number(m[3]));
  }
  return out;
}

function seq(i: number, state: SequenceState, reservedBytes?: number): Sequence {
  const s = createSequence(i, `p${i}`, "x", `j-n-${i}`);
  s.state = state;
  if (reservedBytes !== undefined) {
    const shard: Shard = { node, kvHeadStart: 0, kvHeadEnd: 1, seqId: s.seqId, opened: true, reservedBytes };
    s.shards = [shard];
  }
  return s;
}

test("requests by state, KV usage of open shards, and the finished_reason of a cancelled or failed job", async (t) => {
  const metrics = await startMetrics({ serviceName: "t", role: "coordinator", nodeId: "u1", port: 0 });
  t.after(() => metrics.shutdown());
  serveModelMetrics(["m1", "m2"]);
  const abort = new AbortController();
  const kvNodes = [node.address];
  const a = trackRequests({ model: "m1", prompts: 6, signal: abort.signal, kvNodes: () => kvNodes });
  // 6 prompts, 5 created: 1 waiting, 1 moving, 1 opening, 1 running with 300 B, 1 waiting for its node with 100 B.
  a.attach([
    seq(0, SequenceState.Waiting),
    seq(1, SequenceState.Moving),
    seq(2, SequenceState.Opening),
    seq(3, SequenceState.Running, 300),
    seq(4, SequenceState.WaitingForNode, 100),
  ]);
  const gauges = async (model: string) => ({
    running: (await read(metrics.url, "tessera_num_requests_running", model)).get(""),
    waiting: (await read(metrics.url, "tessera_num_requests_waiting", model)).get(""),
    kv: (await read(metrics.url, "tessera_kv_cache_usage_perc", model)).get(""),
  });
  // The node's capacity not known yet: no KV usage sample.
  assert.deepEqual(await gauges("m1"), { running: 3, waiting: 3, kv: undefined });
  assert.deepEqual(await gauges("m2"), { running: 0, waiting: 0, kv: 0 });
  noteKvCapacity(node.address, 1000);
  assert.deepEqual(await gauges("m1"), { running: 3, waiting: 3, kv: 0.4 });

  // A failed job: its one finished prompt by its reason, the 5 others as errors.
  const b = trackRequests({ model: "m2", prompts: 6, signal: new AbortController().signal, kvNodes: () => [] });
  const done = seq(0, SequenceState.Running);
  b.attach([done]);
  finished(done, "length");
  b.finished(done, "length");
  b.end();
  b.end();
  assert.deepEqual(Object.fromEntries(await read(metrics.url, "tessera_request_success_total", "m2")), {
    stop: 0,
    length: 1,
    abort: 0,
    error: 5,
  });

  // The first job cancelled: its engine's "error" finishes and the prompts left are aborts.
  abort.abort();
  a.finished(seq(5, SequenceState.Running), "error");
  a.end();
  assert.deepEqual(Object.fromEntries(await read(metrics.url, "tessera_request_success_total", "m1")), {
    stop: 0,
    length: 0,
    abort: 6,
    error: 0,
  });
  assert.equal((await read(metrics.url, "tessera_e2e_request_latency_seconds_count", "m1")).get(""), 6);
  assert.deepEqual(await gauges("m1"), { running: 0, waiting: 0, kv: 0 });
});
