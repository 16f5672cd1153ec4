/**
 * Issue 5, batch jobs: jobs submitted to NATS JetStream (the real server on
 * 127.0.0.1:4222, a prefix per test) are pulled and run by a coordinator's
 * job worker through its own Generate RPC. Results come back in the input's
 * format with the tokens of a direct Generate; a coordinator killed
 * mid-job (SIGKILL) and started again resumes without redoing or repeating
 * a prompt; cancel stops a running job; a bad file is refused at submit.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { generateRequest, parseBatchInput } from "@tessera/core";
import { JobStore, connectNats, type JobState } from "@tessera/nats";
import type { Result } from "@tessera/proto";
import { generate, openAiJobFile, startInProcessCluster, tempDir, tesseraJobFile } from "@tessera/testing";
import { createJobWorker } from "@tessera/coordinator";
import { startTestCluster, runCli } from "./helpers.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();

type After = { after(fn: () => Promise<void>): void };

async function openStore(t: After): Promise<{ store: JobStore; prefix: string }> {
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "jobs-integration-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  return { store, prefix };
}

async function waitEnd(store: JobStore, id: string, onState?: (s: JobState) => void | Promise<void>) {
  let last: JobState | undefined;
  for await (const s of store.watch(id)) {
    last = s;
    await onState?.(s);
  }
  return last!;
}

async function lines(store: JobStore, id: string): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  for await (const l of store.results(id)) out.push(JSON.parse(l));
  return out;
}

/** The Generate a job's worker makes, called directly (all prompts, one call). */
async function direct(address: string, s: JobState, input: string): Promise<Map<string, Result>> {
  const { prompts } = parseBatchInput("input", input);
  const out = await generate(address, generateRequest(prompts, s.sampling));
  return out.results;
}

/** Every prompt exactly once, with the tokens of the direct run. */
function assertTesseraResults(got: Record<string, any>[], want: Map<string, Result>) {
  assert.deepEqual(got.map((l) => l["id"]).sort(), [...want.keys()].sort(), "each prompt answered exactly once");
  for (const l of got) {
    const w = want.get(l["id"])!;
    assert.equal(l["finish_reason"], w.finishReason, `prompt ${l["id"]}`);
    assert.deepEqual(l["completion_token_ids"], w.completionTokenIds, `prompt ${l["id"]}: tokens`);
    assert.equal(l["completion"], w.completion);
  }
}

test("jobs in both formats run through the coordinator, high priority first, with a direct Generate's tokens", async (t) => {
  const cluster = await startInProcessCluster(t);
  const { store, prefix } = await openStore(t);
  const inputs = {
    a: tesseraJobFile(4),
    b: openAiJobFile([
      { model: "whatever", prompt: "Once upon a time", max_tokens: 16 },
      { prompt: "Tom had a red ball", max_tokens: 12, temperature: 0.8, top_p: 0.9, seed: 5 },
      { prompt: "", max_tokens: 20 },
    ]),
    c: tesseraJobFile(2),
  };
  const a = await store.submit({ jobId: "a", input: enc.encode(inputs.a), sampling: { maxTokens: 24 } });
  const b = await store.submit({ jobId: "b", input: enc.encode(inputs.b) });
  const c = await store.submit({
    jobId: "c",
    priority: "high",
    input: enc.encode(inputs.c),
    sampling: { maxTokens: 16, temperature: 1 },
  });
  assert.deepEqual([a.created, b.created, c.created], [true, true, true]);
  assert.equal(b.job.format, "openai");
  // The same id again: the same job, nothing new queued.
  const again = await store.submit({ jobId: "a", input: enc.encode(inputs.a) });
  assert.equal(again.created, false);

  const worker = createJobWorker({
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    defaultModel: "stories260K.bin",
    ackWaitMs: 3000,
    log: () => {},
  });
  t.after(() => worker.close());
  await worker.start();
  const ends = await Promise.all(["a", "b", "c"].map((id) => waitEnd(store, id)));
  for (const s of ends) {
    assert.equal(s.status, "completed", `${s.id}: ${s.error}`);
    assert.equal(s.promptsDone, s.promptsTotal);
    assert.equal(s.attempts, 1);
  }
  const [endA, endB, endC] = ends as [JobState, JobState, JobState];
  assert.ok(endC.startedAt! < endA.startedAt! && endA.startedAt! < endB.startedAt!, "high first, then in order");
  assert.equal((await store.list()).length, 3);

  const wantA = await direct(cluster.address, endA, inputs.a);
  assertTesseraResults(await lines(store, "a"), wantA);
  assert.equal(
    endA.completionTokens,
    [...wantA.values()].reduce((n, r) => n + r.completionTokenIds.length, 0),
  );
  assertTesseraResults(await lines(store, "c"), await direct(cluster.address, endC, inputs.c));

  const wantB = await direct(cluster.address, endB, inputs.b);
  const gotB = await lines(store, "b");
  assert.deepEqual(gotB.map((l) => l["custom_id"]).sort(), ["req-0", "req-1", "req-2"]);
  for (const l of gotB) {
    const w = wantB.get(l["custom_id"])!;
    assert.equal(l["error"], null);
    assert.equal(l["response"].status_code, 200);
    const body = l["response"].body;
    assert.equal(body.object, "text_completion");
    assert.equal(body.model, "stories260K.bin");
    assert.deepEqual(body.choices, [{ text: w.completion, index: 0, logprobs: null, finish_reason: w.finishReason }]);
    assert.deepEqual(body.usage, {
      prompt_tokens: w.promptTokenIds.length,
      completion_tokens: w.completionTokenIds.length,
      total_tokens: w.promptTokenIds.length + w.completionTokenIds.length,
    });
  }
});

test("cancel stops a running job; its stored results stay readable", async (t) => {
  const cluster = await startInProcessCluster(t, { coordinator: { maxBatchSequences: 4 } });
  const { store, prefix } = await openStore(t);
  await store.submit({ jobId: "long", input: enc.encode(tesseraJobFile(64)), sampling: { maxTokens: 256 } });
  const worker = createJobWorker({
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    ackWaitMs: 3000,
    flushMs: 50,
    log: () => {},
  });
  t.after(() => worker.close());
  await worker.start();
  let cancelled = false;
  const end = await waitEnd(store, "long", async (s) => {
    if (!cancelled && s.status === "running" && s.promptsDone > 0) {
      cancelled = true;
      await store.cancel("long");
    }
  });
  assert.ok(cancelled, "the job ended before it could be cancelled");
  assert.equal(end.status, "cancelled");
  assert.ok(end.promptsDone < 64, `all ${end.promptsDone} prompts ran`);
  const got = await lines(store, "long");
  assert.equal(got.length, end.promptsDone);
  assert.equal(new Set(got.map((l) => l["id"])).size, got.length);
});

test("a coordinator killed mid-job and started again resumes: every prompt answered once, same tokens", async (t) => {
  const { store, prefix } = await openStore(t);
  const cluster = await startTestCluster({
    flags: { coordinator: ["--nats", SERVERS, "--nats-prefix", prefix, "--max-batch", "4"] },
  });
  t.after(() => cluster.stop());
  const input = tesseraJobFile(24);
  await store.submit({ jobId: "k", input: enc.encode(input), sampling: { maxTokens: 200 } });
  let killedAt: number | undefined;
  const end = await waitEnd(store, "k", async (s) => {
    if (killedAt === undefined && s.status === "running" && s.promptsDone >= 4) {
      killedAt = s.promptsDone;
      await cluster.kill("coordinator");
      await cluster.restart("coordinator");
    }
  });
  assert.ok(killedAt !== undefined && killedAt < 24, `killed at ${killedAt} of 24 prompts`);
  t.diagnostic(`coordinator killed with ${killedAt}/24 prompts stored; ${end.completionTokens} tokens in all`);
  assert.equal(end.status, "completed", end.error);
  assert.equal(end.attempts, 2);
  assert.equal(end.promptsDone, 24);
  assertTesseraResults(await lines(store, "k"), await direct(cluster.address, end, input));
});

test("a worker stopped mid-job hands it back and another finishes it: every prompt once, none failed, same tokens", async (t) => {
  const cluster = await startInProcessCluster(t, { coordinator: { maxBatchSequences: 4 } });
  const { store, prefix } = await openStore(t);
  const input = tesseraJobFile(24);
  await store.submit({ jobId: "h", input: enc.encode(input), sampling: { maxTokens: 64 } });
  const workerOptions = {
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    ackWaitMs: 3000,
    flushMs: 20,
    log: () => {},
  };
  const first = createJobWorker(workerOptions);
  await first.start();
  let stoppedAt: number | undefined;
  let second: ReturnType<typeof createJobWorker> | undefined;
  t.after(async () => {
    await first.close();
    await second?.close();
  });
  const end = await waitEnd(store, "h", async (s) => {
    if (stoppedAt === undefined && s.status === "running" && s.promptsDone >= 2) {
      stoppedAt = s.promptsDone;
      // A graceful stop (SIGTERM): the job is handed back, not failed, and
      // the sequences the engine ends while stopping are no results.
      await first.close();
      second = createJobWorker(workerOptions);
      await second.start();
    }
  });
  assert.ok(stoppedAt !== undefined && stoppedAt < 24, `stopped at ${stoppedAt} of 24 prompts`);
  assert.equal(end.status, "completed", end.error);
  assert.equal(end.attempts, 2);
  const got = await lines(store, "h");
  assert.deepEqual(
    got.filter((l) => l["finish_reason"] === "error").map((l) => `${l["id"]}: ${l["error"]}`),
    [],
    "no prompt failed because its worker stopped",
  );
  assertTesseraResults(got, await direct(cluster.address, end, input));
});

test("the CLI: a bad file or one over a limit is refused naming its line or field; the same --job-id twice is one job", async (t) => {
  const { prefix } = await openStore(t);
  const dir = await tempDir();
  t.after(() => dir.remove());
  const nats = ["--nats", SERVERS, "--nats-prefix", prefix];
  const bad = join(dir.path, "bad.jsonl");
  await writeFile(bad, openAiJobFile([{ prompt: "fine" }, { prompt: "x", max_tokens: "ten" }]));
  const refused = await runCli(["submit", bad, ...nats]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /bad\.jsonl: 1 bad line\(s\):\n {2}line 2: field "body\.max_tokens"/);
  // Over a limit (max_tokens 5000 > 4096): refused before anything is stored, naming the field.
  const greedy = join(dir.path, "greedy.jsonl");
  await writeFile(greedy, openAiJobFile([{ prompt: "fine" }, { prompt: "long", max_tokens: 5000 }]));
  const over = await runCli(["submit", greedy, ...nats]);
  assert.equal(over.code, 1);
  assert.match(over.stderr, /greedy\.jsonl: prompts\[1\] \(id "[^"]+"\)\.max_tokens: 5000 is over the limit of 4096/);
  const { stdout: listed } = await runCli(["jobs", ...nats]);
  assert.equal(listed.trim(), "", "nothing was stored");

  const good = join(dir.path, "good.jsonl");
  await writeFile(good, tesseraJobFile(3));
  const first = await runCli(["submit", good, "--job-id", "same", "--priority", "low", ...nats]);
  const second = await runCli(["submit", good, "--job-id", "same", ...nats]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.stdout, "same\n");
  assert.equal(second.stdout, "same\n");
  assert.match(second.stderr, /exists already/);
  const jobs = await runCli(["jobs", ...nats]);
  assert.deepEqual(
    jobs.stdout
      .trim()
      .split("\n")
      .map((l) => l.split("\t").slice(0, 4)),
    [["same", "queued", "low", "0/3 prompts, 0 tokens"]],
  );
  const status = await runCli(["status", "same", ...nats]);
  assert.match(status.stdout, /^job same: queued\nprogress: 0\/3 prompts, 0 tokens\n/);
  assert.equal((await runCli(["cancel", "same", ...nats])).code, 0);
  const watched = await runCli(["watch", "same", ...nats]);
  assert.equal(watched.code, 3);
  assert.match(watched.stdout, / same cancelled: 0\/3 prompts, 0 tokens\n$/);
  assert.equal((await runCli(["results", "same", ...nats])).stdout, "");
});

test("issue 13: a line not UTF-8 or over the line limit is refused at submit naming its line; nothing is stored or sent", async (t) => {
  const { store, prefix } = await openStore(t);
  const notUtf8 = Buffer.concat([
    enc.encode('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "'),
    Buffer.from([0xff]),
    enc.encode('"}\n'),
  ]);
  await assert.rejects(
    store.submit({ jobId: "u", input: notUtf8, fileName: "u.jsonl" }),
    (err: Error) =>
      err.name === "InputFileError" &&
      err.message === "u.jsonl: 1 bad line(s):\n  line 2: not valid UTF-8 (byte 24 of the line)",
  );
  await assert.rejects(
    store.submit({
      jobId: "s",
      input: enc.encode('{"id": "a", "prompt": "0123456789"}'),
      fileName: "s.jsonl",
      maxLineBytes: 16,
    }),
    /s\.jsonl: 1 bad line\(s\):\n {2}line 1: 35 bytes is over the limit of 16 bytes per line/,
  );
  assert.equal(await store.get("u"), undefined);
  assert.equal(await store.get("s"), undefined);

  // The CLI checks the file before it connects (a 2 MiB line once failed at the gRPC message size).
  const dir = await tempDir();
  t.after(() => dir.remove());
  const huge = join(dir.path, "huge.jsonl");
  await writeFile(huge, `{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "${"x".repeat(2 * 1024 * 1024)}"}\n`);
  for (const where of [
    ["--cluster", "127.0.0.1:9", "--plaintext"],
    ["--nats", SERVERS, "--nats-prefix", prefix],
  ]) {
    const refused = await runCli(["submit", huge, ...where]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(
      refused.stderr,
      /huge\.jsonl: 1 bad line\(s\):\n {2}line 2: 2097177 bytes is over the limit of 1048576 bytes per line/,
    );
    assert.doesNotMatch(refused.stderr, /127\.0\.0\.1:9|xxxx/);
  }
});
