/**
 * Issue 5, item 2: the batch-job operations on the Coordinator gRPC service
 * (SubmitJob, ListJobs, GetJob, GetResults, CancelJob, WatchJob), against
 * the real NATS server on 127.0.0.1:4222 with a prefix per test and an
 * in-process cluster whose coordinator has `nats`; a job worker runs the
 * jobs through the coordinator's Generate. A job submitted over gRPC is
 * watched to completion and its results (also followed while it runs) carry
 * the tokens of a direct Generate; the same job_id twice is one job; errors
 * are NOT_FOUND, INVALID_ARGUMENT naming the line or limit, and
 * FAILED_PRECONDITION on a coordinator without NATS. With bearer tokens
 * (issue 13): a tenant's SubmitJob at priority high is PERMISSION_DENIED as
 * its Generate is, and job ids are the tenant's own: two tenants' jobs of
 * one id are two jobs, each reached only by its owner, and another's id
 * answers as an id nobody uses.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { generateRequest, parseBatchInput } from "@tessera/core";
import { JobStore, connectNats, registryBucket } from "@tessera/nats";
import { Code, Coordinator, createClient, type Client, type Job } from "@tessera/proto";
import {
  generate,
  openAiJobFile,
  startInProcessCluster,
  tesseraJobFile,
  collect,
  failure,
  tempDir,
} from "@tessera/testing";
import { createJobWorker } from "@tessera/coordinator";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();

/**
 * A fresh prefix, an in-process cluster whose coordinator uses it (with
 * `limits`), a client of the coordinator and the test's own JobStore; the
 * prefix's job stream and buckets and its node-registry bucket are deleted
 * after the test.
 */
async function natsCluster(t: TestContext, limits?: { maxTokens: number }, tokensFile?: string) {
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "jobs-grpc-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  const cluster = await startInProcessCluster(t, {
    coordinator: {
      nats: SERVERS,
      natsPrefix: prefix,
      ...(limits ? { limits } : {}),
      ...(tokensFile ? { tokensFile } : {}),
    },
  });
  const client = createClient(Coordinator, cluster.address);
  t.after(async () => client.close());
  return { prefix, store, cluster, client };
}

test("a job submitted over gRPC is watched to completion; its results (also followed) have a direct Generate's tokens; the same job_id twice is one job", async (t) => {
  const { prefix, store, cluster, client } = await natsCluster(t);
  const input = tesseraJobFile(4);
  const submitted = await client.submitJob({
    jobId: "g1",
    tenant: "acme",
    priority: "high",
    input: enc.encode(input),
    format: "tessera",
    sampling: { maxTokens: 24, temperature: 1, topP: 0.9 },
    fileName: "prompts.jsonl",
  });
  assert.equal(submitted.id, "g1");
  assert.equal(submitted.status, "queued");
  assert.equal(submitted.tenant, "acme");
  assert.equal(submitted.priority, "high");
  assert.equal(submitted.format, "tessera");
  assert.equal(submitted.promptsTotal, 4);
  assert.equal(submitted.fileName, "prompts.jsonl");
  assert.equal(submitted.inputBytes, BigInt(enc.encode(input).byteLength));
  assert.ok(submitted.sampling!.seed > 0n, "a seed is fixed at submit");
  assert.ok(!Number.isNaN(Date.parse(submitted.submittedAt)), submitted.submittedAt);

  // The same id again (another file even): the same job, nothing new stored or queued.
  const again = await client.submitJob({ jobId: "g1", input: enc.encode(tesseraJobFile(2)) });
  assert.equal(again.submittedAt, submitted.submittedAt);
  assert.equal(again.promptsTotal, 4);
  assert.deepEqual(
    (await client.listJobs({})).jobs.map((j) => j.id),
    ["g1"],
  );
  assert.deepEqual(
    (await client.listJobs({ tenant: "acme" })).jobs.map((j) => j.id),
    ["g1"],
  );
  assert.deepEqual((await client.listJobs({ tenant: "other" })).jobs, []);

  // Watch and follow the results from before the job starts.
  const watching = collect<Job>(client.watchJob({ id: "g1" }));
  const following = collect(client.getResults({ id: "g1", follow: true }));
  const worker = createJobWorker({
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    ackWaitMs: 3000,
    log: () => {},
  });
  t.after(() => worker.close());
  await worker.start();

  const states = await watching;
  const end = states.at(-1)!;
  assert.equal(states[0]!.status, "queued");
  assert.equal(end.status, "completed", end.error);
  assert.ok(
    states.slice(0, -1).every((s) => s.status !== "completed"),
    "the stream ends at the first end state",
  );
  assert.equal(end.promptsDone, 4);
  assert.equal(end.attempts, 1);
  assert.ok(end.startedAt !== "" && end.finishedAt !== "");
  assert.deepEqual(await client.getJob({ id: "g1" }), end);

  const stored = (await store.get("g1"))!;
  const want = (
    await generate(cluster.address, generateRequest(parseBatchInput("input", input).prompts, stored.sampling))
  ).results;
  const lines = (await collect(client.getResults({ id: "g1" }))).map((l) => JSON.parse(l.line));
  assert.deepEqual(lines.map((l) => l.id).sort(), ["p0", "p1", "p2", "p3"], "each prompt exactly once");
  for (const l of lines) {
    const w = want.get(l.id)!;
    assert.deepEqual(l.completion_token_ids, w.completionTokenIds, `prompt ${l.id}: tokens`);
    assert.equal(l.completion, w.completion);
    assert.equal(l.finish_reason, w.finishReason);
  }
  assert.equal(end.completionTokens, BigInt([...want.values()].reduce((n, r) => n + r.completionTokenIds.length, 0)));
  // Followed while it ran: the same lines, in the same order.
  assert.deepEqual(
    (await following).map((l) => JSON.parse(l.line)),
    lines,
  );
});

test("job RPC errors: unknown id NOT_FOUND, a bad line or a limit INVALID_ARGUMENT naming it; cancel of a queued job", async (t) => {
  // No job worker: submitted jobs stay queued. max_tokens limit 100 (the coordinator's own, not the default 4096).
  const { client } = await natsCluster(t, { maxTokens: 100 });
  for (const call of [
    client.getJob({ id: "nope" }),
    client.cancelJob({ id: "nope" }),
    collect(client.watchJob({ id: "nope" })),
    collect(client.getResults({ id: "nope" })),
  ]) {
    const f = await failure(call);
    assert.equal(f.code, Code.NOT_FOUND, f.message);
    assert.match(f.message, /job "nope" not found/);
  }
  const badId = await failure(client.getJob({ id: "a.b" }));
  assert.equal(badId.code, Code.INVALID_ARGUMENT);
  assert.match(badId.message, /^id: must be 1-128 letters/);

  const bad = await failure(
    client.submitJob({
      input: enc.encode(openAiJobFile([{ prompt: "fine" }, { prompt: "x", max_tokens: "ten" }])),
      fileName: "requests.jsonl",
    }),
  );
  assert.equal(bad.code, Code.INVALID_ARGUMENT);
  assert.match(bad.message, /requests\.jsonl: 1 bad line\(s\):\n {2}line 2: field "body\.max_tokens"/);
  const over = await failure(
    client.submitJob({ input: enc.encode(openAiJobFile([{ prompt: "fine" }, { prompt: "long", max_tokens: 200 }])) }),
  );
  assert.equal(over.code, Code.INVALID_ARGUMENT);
  assert.match(over.message, /^input: prompts\[1\] \(id "req-1"\)\.max_tokens: 200 is over the limit of 100/);
  const overSampling = await failure(
    client.submitJob({ input: enc.encode(tesseraJobFile(1)), sampling: { maxTokens: 101 } }),
  );
  assert.equal(overSampling.code, Code.INVALID_ARGUMENT);
  assert.match(overSampling.message, /sampling\.max_tokens: 101 is over the limit of 100/);
  for (const [req, field] of [
    [{ priority: "urgent" }, /^priority: /],
    [{ format: "csv" }, /^format: /],
    [{ jobId: "has space" }, /^job_id: /],
    [{ sampling: { temperature: NaN } }, /^sampling\.temperature: /],
    [{ sampling: { topP: 2 } }, /^sampling\.top_p: /],
  ] as const) {
    const f = await failure(client.submitJob({ input: enc.encode(tesseraJobFile(1)), ...req }));
    assert.equal(f.code, Code.INVALID_ARGUMENT, f.message);
    assert.match(f.message, field);
  }
  assert.deepEqual((await client.listJobs({})).jobs, [], "nothing was stored");

  const queued = await client.submitJob({ jobId: "q", input: enc.encode(tesseraJobFile(3)), priority: "low" });
  assert.equal(queued.status, "queued");
  const cancelled = await client.cancelJob({ id: "q" });
  assert.equal(cancelled.status, "cancelled");
  assert.notEqual(cancelled.finishedAt, "");
  assert.deepEqual(await client.getJob({ id: "q" }), cancelled);
  // Cancelling again changes nothing; watching an ended job gives its state and ends.
  assert.deepEqual(await client.cancelJob({ id: "q" }), cancelled);
  const watched = await collect<Job>(client.watchJob({ id: "q" }));
  assert.deepEqual(
    watched.map((s) => s.status),
    ["cancelled"],
  );
  assert.deepEqual(await collect(client.getResults({ id: "q", follow: true })), []);
});

test("a coordinator without NATS answers every job RPC with FAILED_PRECONDITION", async (t) => {
  const cluster = await startInProcessCluster(t);
  const client: Client<typeof Coordinator> = createClient(Coordinator, cluster.address);
  t.after(async () => client.close());
  for (const call of [
    client.submitJob({ input: enc.encode(tesseraJobFile(1)) }),
    client.listJobs({}),
    client.getJob({ id: "x" }),
    client.cancelJob({ id: "x" }),
    collect(client.getResults({ id: "x", follow: true })),
    collect(client.watchJob({ id: "x" })),
  ]) {
    const f = await failure(call);
    assert.equal(f.code, Code.FAILED_PRECONDITION, f.message);
    assert.match(f.message, /the coordinator has no NATS \(--nats\)/);
  }
});

test("open WatchJob and GetResults streams end with UNAVAILABLE when the coordinator stops; a client may cancel them", async (t) => {
  const { prefix, cluster, client } = await natsCluster(t);
  await client.submitJob({ jobId: "w", input: enc.encode(tesseraJobFile(2)) });
  const nc = await connectNats({ servers: SERVERS, name: "jobs-grpc-test-consumers" });
  t.after(() => nc.close());
  const jsm = await jetstreamManager(nc);
  // Each open stream is a KV watch: an ordered consumer on the job-state bucket's stream.
  const consumers = async () => new Set((await jsm.consumers.list(`KV_${prefix}-job-state`).next()).map((c) => c.name));
  /** Opens a stream with `open` and waits until the server watches for it (a new consumer). */
  const opened = async <T>(open: () => Promise<T>): Promise<{ end: Promise<T> }> => {
    const before = await consumers();
    const p = open();
    p.catch(() => undefined); // awaited by the caller
    for (const deadline = Date.now() + 20_000; ; await new Promise((r) => setTimeout(r, 50))) {
      if ([...(await consumers())].some((c) => !before.has(c))) return { end: p };
      if (Date.now() > deadline) assert.fail("timed out waiting for the server to open the stream");
    }
  };

  const abort = new AbortController();
  const cancelled = await opened(() => failure(collect(client.watchJob({ id: "w" }, { signal: abort.signal }))));
  abort.abort();
  assert.equal((await cancelled.end).code, Code.CANCELLED);
  assert.equal((await client.getJob({ id: "w" })).status, "queued");

  const watching = await opened(() => failure(collect(client.watchJob({ id: "w" }))));
  const following = await opened(() => failure(collect(client.getResults({ id: "w", follow: true }))));
  await cluster.coordinator.close();
  for (const f of [await watching.end, await following.end]) {
    assert.equal(f.code, Code.UNAVAILABLE, f.message);
    assert.match(f.message, /the coordinator is stopping/);
  }
});

test("with tokens: a tenant's SubmitJob at priority high is PERMISSION_DENIED as its Generate; job ids are each tenant's own, another's answers as an unused one", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const token = { acme: randomBytes(16).toString("hex"), globex: randomBytes(16).toString("hex") };
  const admin = randomBytes(16).toString("hex");
  const tokensFile = join(dir.path, "tokens.yaml");
  await writeFile(
    tokensFile,
    `tokens:\n  - { tenant: acme, token: "${token.acme}" }\n  - { tenant: globex, token: "${token.globex}" }\n` +
      `  - { tenant: ops, token: "${admin}", admin: true }\n`,
  );
  // No job worker: submitted jobs stay queued.
  const { store, cluster } = await natsCluster(t, undefined, tokensFile);
  const as = (tok: string) => {
    const c = createClient(Coordinator, cluster.address, {}, { token: tok });
    t.after(() => c.close());
    return c;
  };
  const acme = as(token.acme);
  const globex = as(token.globex);
  const ops = as(admin);

  // Priority high: refused to a tenant exactly as Generate refuses it; an admin may.
  const high = await failure(acme.submitJob({ jobId: "h", priority: "high", input: enc.encode(tesseraJobFile(1)) }));
  assert.equal(high.code, Code.PERMISSION_DENIED, high.message);
  assert.equal(high.message, 'priority: "high" needs an admin token (tenant acme)');
  const generateHigh = await failure(
    collect(acme.generate(generateRequest([{ id: "p0", prompt: "Once", line: 1 }], {}, { priority: "high" }))),
  );
  assert.deepEqual(generateHigh, high);
  assert.deepEqual(await store.list(), [], "nothing was stored");
  assert.equal(
    (await ops.submitJob({ jobId: "h", priority: "high", input: enc.encode(tesseraJobFile(1)) })).priority,
    "high",
  );

  // The same id for two tenants: two jobs, neither told of the other.
  const mine = await acme.submitJob({ jobId: "same", input: enc.encode(tesseraJobFile(2)) });
  const theirs = await globex.submitJob({ jobId: "same", input: enc.encode(tesseraJobFile(3)) });
  assert.deepEqual([mine.id, mine.tenant, mine.promptsTotal], ["same", "acme", 2]);
  assert.deepEqual([theirs.id, theirs.tenant, theirs.promptsTotal], ["same", "globex", 3]);
  // Again: each its own job (idempotent), whoever submits it first.
  assert.deepEqual(await globex.submitJob({ jobId: "same", input: enc.encode(tesseraJobFile(1)) }), theirs);
  assert.deepEqual(await acme.submitJob({ jobId: "same", input: enc.encode(tesseraJobFile(1)) }), mine);
  for (const [client, job] of [
    [acme, mine],
    [globex, theirs],
  ] as const) {
    assert.deepEqual(await client.getJob({ id: "same" }), job);
    assert.deepEqual((await client.listJobs({})).jobs, [job]);
    assert.deepEqual(await collect(client.getResults({ id: "same" })), []);
  }
  // globex cancels its own "same": acme's stays queued; its watch shows its own job.
  const cancelled = await globex.cancelJob({ id: "same" });
  assert.deepEqual([cancelled.id, cancelled.tenant, cancelled.status], ["same", "globex", "cancelled"]);
  assert.deepEqual(
    (await collect<Job>(globex.watchJob({ id: "same" }))).map((j) => [j.id, j.tenant, j.status]),
    [["same", "globex", "cancelled"]],
  );
  assert.equal((await acme.getJob({ id: "same" })).status, "queued");

  // Another's id answers as an id nobody uses: NOT_FOUND, the same message.
  await acme.submitJob({ jobId: "acme-only", input: enc.encode(tesseraJobFile(1)) });
  for (const id of ["acme-only", "nobody"]) {
    for (const call of [
      globex.getJob({ id }),
      globex.cancelJob({ id }),
      collect(globex.watchJob({ id })),
      collect(globex.getResults({ id })),
    ]) {
      assert.deepEqual(await failure(call), { code: Code.NOT_FOUND, message: `job "${id}" not found` });
    }
  }
  assert.equal((await acme.getJob({ id: "acme-only" })).status, "queued", "globex's cancel changed nothing");

  // The admin (and the NATS-direct CLI) address globex's job by its key; acme's kept its id.
  assert.deepEqual((await ops.listJobs({})).jobs.map((j) => [j.id, j.tenant]).sort(), [
    ["acme-only", "acme"],
    ["globex/same", "globex"],
    ["h", "ops"],
    ["same", "acme"],
  ]);
  assert.equal((await ops.getJob({ id: "globex/same" })).status, "cancelled");
  assert.equal((await store.get("globex/same"))?.promptsTotal, 3);
  assert.equal((await store.get("same"))?.tenant, "acme");
  const badKey = await failure(ops.getJob({ id: "globex/a.b" }));
  assert.equal(badKey.code, Code.INVALID_ARGUMENT);
  assert.match(badKey.message, /^id: must be 1-128 letters/);
  // A tenant's id is an id, never a key.
  const keyAsId = await failure(globex.getJob({ id: "globex/same" }));
  assert.equal(keyAsId.code, Code.INVALID_ARGUMENT);
});
