/**
 * Issue 4, "two memory-nodes of different configured prices and
 * capacities": the coordinator reads each node's Info (price, read
 * bandwidth, room) at job start, plans the job with packages/scheduler's
 * planner, streams the plan (GenerateEvent.plan, then Summary.plan) and
 * places each sequence's KV cache where the plan's kv_shares say; the
 * tokens are those of a run on a single node. (Whether the plan's choice is
 * the cheaper per measured token is bench/price-placement.ts's question.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Attention, KvPlacement, createClient, type JobPlan } from "@tessera/proto";
import { parsePromptsJsonl } from "@tessera/core";
import { createGpuNode } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate } from "@tessera/testing";

/** KV bytes of one stories260K position: 5 layers x (K + V) x 4 KV heads x head_dim 8 x 4 bytes. */
const KV_BYTES_PER_POSITION = 5 * 2 * 4 * 8 * 4;
const MAX_TOKENS = 24;

/** Units (sequence x KV-head group) per "role@address", as the plan's kv_shares and as Result.kv_node list them. */
const planned = (p: JobPlan) =>
  new Map(p.kvShares.filter((s) => s.units > 0).map((s) => [`${s.role}@${s.address}`, s.units]));
function landed(kvNodes: string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const shard of kvNodes.flatMap((k) => k.split(",")).filter(Boolean)) out.set(shard, (out.get(shard) ?? 0) + 1);
  return out;
}
const sorted = (m: Map<string, number>) => new Map([...m].sort(([a], [b]) => a.localeCompare(b)));

test("sequences land where the coordinator's plan puts them, with single-node tokens", async (t) => {
  const gpu = createGpuNode({ port: 0 });
  // Price unknown, bandwidth measured at start.
  const single = createMemoryNode({ port: 0 });
  await Promise.all([gpu, single].map((n) => n.start()));
  const log: string[] = [];
  const coordinator = (memoryNodes: string[]) =>
    createCoordinator({
      gpuNodes: [gpu.address],
      memoryNodes,
      modelPath: bundled.model,
      tokenizerPath: bundled.tokenizer,
      log: (line) => log.push(line),
    });
  // Closed in this order: clients, coordinators, nodes.
  const clients: { close(): void }[] = [];
  const coordinators: { close(): Promise<void> }[] = [];
  const nodes: { close(): Promise<void> }[] = [gpu, single];
  t.after(async () => {
    clients.forEach((c) => c.close());
    await Promise.all(coordinators.map((c) => c.close()));
    await Promise.all(nodes.map((n) => n.close()));
  });
  const alone = coordinator([single.address]);
  coordinators.push(alone);
  await alone.start();

  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8")).map((p) => ({
    id: p.id,
    prompt: p.prompt,
  }));
  const request = { prompts, sampling: { temperature: 0, maxTokens: MAX_TOKENS }, kv: KvPlacement.MEMORY };
  const one = await generate(alone.address, request);
  assert.equal(one.summary?.errors, 0);

  // Neither priced node holds the whole batch (the planner reserves the longest prompt + max tokens
  // per sequence): "cheap" about 6 sequences, "dear" about 12, so the plan must use both.
  const longest = Math.max(...[...one.results.values()].map((r) => r.promptTokenIds.length));
  const sequenceBytes = (longest + MAX_TOKENS) * KV_BYTES_PER_POSITION;
  const cheap = createMemoryNode({
    port: 0,
    pricePerHour: 1,
    readBytesPerSecond: 10e9,
    capacityBytes: Math.floor(6.5 * sequenceBytes),
  });
  const dear = createMemoryNode({
    port: 0,
    pricePerHour: 3,
    readBytesPerSecond: 10e9,
    capacityBytes: Math.floor(12.5 * sequenceBytes),
  });
  nodes.push(cheap, dear);
  await Promise.all([cheap.start(), dear.start()]);
  // dear is listed first: a least-loaded or first-listed rule alone would start there.
  const priced = coordinator([dear.address, cheap.address]);
  coordinators.push(priced);
  await priced.start();
  const info = [cheap, dear].map((n) => createClient(Attention, n.address));
  clients.push(...info);
  const [cheapInfo, dearInfo] = await Promise.all(info.map((c) => c.info({})));
  assert.equal(cheapInfo!.pricePerHour, 1);
  assert.equal(cheapInfo!.readBytesPerSecond, 10e9);
  assert.equal(dearInfo!.pricePerHour, 3);

  const events: JobPlan[] = [];
  let resultsBeforePlan = 0;
  const two = await generate(priced.address, request, (e) => {
    if (e.event.case === "plan") events.push(e.event.value);
    else if (e.event.case === "result" && events.length === 0) resultsBeforePlan++;
  });
  assert.equal(two.summary?.errors, 0);

  // The plan: streamed before any result, repeated in the summary.
  const plan = two.summary?.plan;
  assert.ok(plan, "coordinator sent no plan (Summary.plan unset)");
  assert.ok(events.length > 0, "coordinator sent no plan event (GenerateEvent.plan)");
  assert.equal(resultsBeforePlan, 0, "results came before the first plan event");
  assert.equal(plan.revision, events.at(-1)!.revision);
  t.diagnostic(`plan: ${plan.summary}; binding: ${plan.bindingConstraint}`);
  assert.ok(plan.kvShares.length > 0, `the plan has no KV shares: "${plan.summary}" (${plan.bindingConstraint})`);
  assert.equal(plan.batch, prompts.length, plan.summary);
  assert.equal(plan.kvHeadGroups, 1, plan.summary);

  // Each sequence's KV cache is where the plan put it (counts per node), and both nodes are used.
  const kvNodes = prompts.map((p) => two.results.get(p.id)!.kvNode);
  assert.deepEqual(sorted(landed(kvNodes)), sorted(planned(plan)), `plan: ${plan.summary}`);
  assert.deepEqual(
    [...planned(plan).keys()].sort(),
    [`memory@${cheap.address}`, `memory@${dear.address}`].sort(),
    `neither node holds the batch alone, yet the plan uses ${[...planned(plan).keys()].join(", ")}`,
  );

  for (const p of prompts) {
    assert.equal(two.results.get(p.id)!.error, "", p.id);
    assert.deepEqual(two.results.get(p.id)!.completionTokenIds, one.results.get(p.id)!.completionTokenIds, p.id);
  }
  // Every reservation was released.
  for (const c of info) assert.equal((await c.info({})).usedBytes, 0n);
});
