/**
 * Issue 5, priorities: a high-priority job submitted while a low-priority
 * job runs starts at once, and its sequences join the coordinator's
 * running batch (1 place here) ahead of the low job's queued sequences:
 * no more of the low job's prompts finish before the high job's than the
 * one running when it came. The same job submitted at low priority waits
 * for the running one. Tokens are those of a direct
 * Generate either way. Real NATS (127.0.0.1:4222, a prefix per test),
 * in-process nodes and coordinator, the coordinator's job worker.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { generateRequest, parseBatchInput } from "@tessera/core";
import { JobStore, connectNats, type JobPriority, type JobState } from "@tessera/nats";
import { createJobWorker } from "@tessera/coordinator";
import { generate, startInProcessCluster, tesseraJobFile } from "@tessera/testing";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();

async function waitEnd(store: JobStore, id: string): Promise<JobState> {
  let last: JobState | undefined;
  for await (const s of store.watch(id)) last = s;
  return last!;
}

/**
 * Runs an 8-prompt low-priority job (128 tokens each: a prompt takes far
 * longer than pulling and claiming a job) and, once it has a result stored, a
 * 2-prompt job of `priority`; resolves both end states, and how many of
 * the long job's prompts were done when the late job was submitted and
 * when it ended (every result is stored at once: chunks of 1).
 */
async function run(t: { after(fn: () => Promise<void>): void }, priority: JobPriority) {
  const cluster = await startInProcessCluster(t, { coordinator: { maxBatchSequences: 1 } });
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "job-priority-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  const inputs = { long: tesseraJobFile(8), late: tesseraJobFile(2) };
  await store.submit({ jobId: "long", priority: "low", input: enc.encode(inputs.long), sampling: { maxTokens: 128 } });
  const worker = createJobWorker({
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    ackWaitMs: 5000,
    chunkResults: 1,
    log: () => {},
  });
  t.after(() => worker.close());
  await worker.start();
  // Once the long job has stored results, the later one is submitted.
  for await (const s of store.watch("long")) if (s.promptsDone >= 1) break;
  await store.submit({ jobId: "late", priority, input: enc.encode(inputs.late), sampling: { maxTokens: 8 } });
  // Read after the submit: a watch may lag; a later count only loosens the bound below.
  const doneAtSubmit = (await store.get("long"))!.promptsDone;
  let doneAtLateEnd = -1;
  const [long, late] = await Promise.all([
    waitEnd(store, "long"),
    waitEnd(store, "late").then(async (s) => {
      doneAtLateEnd = (await store.get("long"))!.promptsDone;
      return s;
    }),
  ]);
  // What a direct Generate of each gives: admission order changes no token.
  for (const [s, input] of [
    [long, inputs.long],
    [late, inputs.late],
  ] as const) {
    assert.equal(s.status, "completed", `${s.id}: ${s.error}`);
    const want = await generate(cluster.address, generateRequest(parseBatchInput("in", input).prompts, s.sampling));
    const got = new Map<string, number[]>();
    for await (const l of store.results(s.id)) {
      const r = JSON.parse(l) as { id: string; completion_token_ids: number[] };
      assert.ok(!got.has(r.id), `${s.id}: ${r.id} answered twice`);
      got.set(r.id, r.completion_token_ids);
    }
    assert.equal(got.size, want.results.size);
    for (const [id, r] of want.results) assert.deepEqual(got.get(id), r.completionTokenIds, `${s.id}/${id}`);
  }
  return { long, late, doneAtSubmit, doneAtLateEnd };
}

test("a high-priority job's sequences join the running batch ahead of a running low-priority job's", async (t) => {
  const { long, late, doneAtSubmit, doneAtLateEnd } = await run(t, "high");
  t.diagnostic(
    `long (low): ${long.startedAt} → ${long.finishedAt}; late (high): ${late.startedAt} → ${late.finishedAt}; ` +
      `long's prompts done: ${doneAtSubmit} at submit, ${doneAtLateEnd} when late ended`,
  );
  assert.ok(late.startedAt! < long.finishedAt!, "the high job starts while the low one runs");
  // The one place went to the high job's 2 sequences once the low job's
  // running sequence ended: at most that one more low prompt is done.
  assert.ok(doneAtLateEnd <= doneAtSubmit + 1, `${doneAtLateEnd} > ${doneAtSubmit} + 1`);
  assert.ok(late.finishedAt! < long.finishedAt!, "the high job ends first");
});

test("the same job at low priority waits for the running one", async (t) => {
  const { long, late } = await run(t, "low");
  t.diagnostic(`long: ${long.startedAt} → ${long.finishedAt}; late (low): ${late.startedAt} → ${late.finishedAt}`);
  assert.ok(late.startedAt! >= long.finishedAt!, "a job of the same priority starts after the running one");
});
