/**
 * Continuous batching (issue 3): with a batch limit and an attention node
 * that holds only a few KV caches, sequences join the running batch as
 * others finish; every result is token-identical to running its prompt
 * alone, and the limits are never exceeded.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Attention, KvPlacement, createClient } from "@tessera/proto";
import { parsePromptsJsonl } from "@tessera/core";
import { bundled, generate, startInProcessCluster } from "@tessera/testing";

/** KV bytes of one stories260K position: 5 layers x (K + V) x 4 KV heads x head_dim 8 x 4 bytes. */
const KV_BYTES_PER_POSITION = 5 * 2 * 4 * 8 * 4;

test("sequences join as others finish, within the batch and capacity limits, with their solo tokens", async (t) => {
  const log: string[] = [];
  const { address: coordinator, memories } = await startInProcessCluster(t, {
    // Room for about three of these sequences (they need 13 to 75 positions).
    memoryCapacityBytes: 3 * 80 * KV_BYTES_PER_POSITION,
    coordinator: { maxBatchSequences: 4, maxPrefillTokens: 8, log: (line) => log.push(line) },
  });
  const info = createClient(Attention, memories[0]!.address);
  t.after(async () => info.close());

  const all = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"));
  // Mixed lengths: prompts differ, and so do their token budgets.
  const prompts = all.map((p, i) => ({ id: p.id, prompt: p.prompt, maxTokens: 8 + ((i * 7) % 60) }));
  const solo = new Map<string, number[]>();
  for (const p of prompts) {
    const r = (
      await generate(coordinator, { prompts: [p], sampling: { temperature: 0 }, kv: KvPlacement.MEMORY })
    ).results.get(p.id)!;
    solo.set(p.id, r.completionTokenIds);
  }

  let most = 0;
  const out = await generate(
    coordinator,
    { prompts, sampling: { temperature: 0 }, kv: KvPlacement.MEMORY },
    async (ev) => {
      if (ev.event.case === "progress") most = Math.max(most, (await info.info({})).sequences);
    },
  );
  assert.equal(out.summary?.errors, 0);
  for (const p of prompts) {
    const r = out.results.get(p.id)!;
    assert.equal(r.error, "", p.id);
    assert.deepEqual(r.completionTokenIds, solo.get(p.id), p.id);
  }
  assert.ok(most >= 2, `at most ${most} sequences ran at once: no batching happened`);
  assert.ok(most <= 4, `${most} sequences ran at once; the batch limit is 4`);
  // The node's capacity, not only the batch limit, held sequences back.
  assert.ok(
    log.some((l) => /sequence\(s\) wait for KV capacity/.test(l)),
    log.join("\n"),
  );
});

test("a sequence that can never fit fails with the node's capacity error while the others complete", async (t) => {
  const { address, memories } = await startInProcessCluster(t, { memoryCapacityBytes: 100 * KV_BYTES_PER_POSITION });
  const memory = memories[0]!;
  const out = await generate(address, {
    prompts: [
      { id: "small", prompt: "The cat", maxTokens: 20 },
      { id: "huge", prompt: "The dog", maxTokens: 400 },
    ],
    sampling: { temperature: 0 },
  });
  assert.equal(out.results.get("small")!.error, "");
  assert.equal(out.results.get("small")!.completionTokenIds.length, 20);
  assert.equal(out.results.get("huge")!.finishReason, "error");
  assert.match(out.results.get("huge")!.error, new RegExp(`^memory-node ${memory.address}: .*cannot open sequence`));
});
