/**
 * The job queue against the real NATS server on 127.0.0.1:4222, each test
 * under its own prefix (stream, buckets and consumers deleted after).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { InputFileError } from "@tessera/core";
import {
  JobOwnershipLostError,
  JobStore,
  checkJobKey,
  connectNats,
  ownJobId,
  tenantJobKey,
  type JobState,
} from "../src/index.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function openStore(t: { after(fn: () => Promise<void>): void }): Promise<JobStore> {
  const nc = await connectNats({ servers: SERVERS, name: "jobs-test" });
  const store = await JobStore.open(nc, { prefix: `t${randomBytes(4).toString("hex")}` });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  return store;
}

const tessera = (n: number) =>
  enc.encode(Array.from({ length: n }, (_, i) => JSON.stringify({ id: `p${i}`, prompt: `prompt ${i}` })).join("\n"));

test("submit stores a queued job; the same id again is the same job", async (t) => {
  const store = await openStore(t);
  const a = await store.submit({ jobId: "j1", input: tessera(3), fileName: "a.jsonl", sampling: { maxTokens: 4 } });
  assert.equal(a.created, true);
  assert.equal(a.job.status, "queued");
  assert.equal(a.job.promptsTotal, 3);
  assert.equal(a.job.format, "tessera");
  assert.equal(a.job.sampling.maxTokens, 4);
  assert.ok(Number.isInteger(a.job.sampling.seed) && a.job.sampling.seed! > 0, "a seed is fixed at submit");
  const b = await store.submit({ jobId: "j1", input: tessera(5) });
  assert.equal(b.created, false);
  assert.equal(b.job.promptsTotal, 3);
  assert.equal(b.job.streamSeq, a.job.streamSeq);
  assert.deepEqual(
    (await store.list()).map((j) => j.id),
    ["j1"],
  );
  // One message in the work queue.
  await store.ensureConsumers(5000);
  const abort = new AbortController();
  const d = await store.nextJob(abort.signal);
  assert.equal(d?.jobId, "j1");
  setTimeout(() => abort.abort(), 1500);
  assert.equal(await store.nextJob(abort.signal), undefined);
});

test("scopeToTenant: a tenant's job ids are its own; the first holder keeps the plain id, another's job goes under <tenant>/<id>", async (t) => {
  const store = await openStore(t);
  const acme = await store.submit({ jobId: "x", tenant: "acme", scopeToTenant: true, input: tessera(1) });
  const dotted = await store.submit({ jobId: "x", tenant: "a.b", scopeToTenant: true, input: tessera(2) });
  const admin = await store.submit({ jobId: "x", input: tessera(3) });
  assert.deepEqual(
    [acme, dotted, admin].map((r) => [r.job.id, r.job.tenant, r.job.promptsTotal, r.created]),
    [
      ["x", "acme", 1, true],
      ["a=b/x", "a.b", 2, true],
      // Not scoped (operators, admins): the id's job, whoever's.
      ["x", "acme", 1, false],
    ],
  );
  assert.equal(tenantJobKey("a.b", "x"), "a=b/x");
  assert.deepEqual([ownJobId(acme.job), ownJobId(dotted.job)], ["x", "x"]);
  // The same id again: each tenant's own job, never another's.
  const again = await store.submit({ jobId: "x", tenant: "a.b", scopeToTenant: true, input: tessera(4) });
  assert.deepEqual([again.job.id, again.created], ["a=b/x", false]);
  assert.equal((await store.find("acme", "x"))?.id, "x");
  assert.equal((await store.find("a.b", "x"))?.id, "a=b/x");
  assert.equal(await store.find("globex", "x"), undefined, "another tenant finds nothing");
  // A job without a tenant under the id: a tenant's job of that id goes under its key.
  await store.submit({ jobId: "y", input: tessera(1) });
  const globex = await store.submit({ jobId: "y", tenant: "globex", scopeToTenant: true, input: tessera(2) });
  assert.deepEqual([globex.job.id, globex.created], ["globex/y", true]);
  assert.equal(checkJobKey("globex/y"), "globex/y");
  assert.throws(() => checkJobKey("globex/a.b"), {
    name: "JobError",
    message: /^job id: must be 1-128 letters/,
  });
  // Each job once in the work queue, under its key.
  await store.ensureConsumers(5000);
  const abort = new AbortController();
  const pulled: string[] = [];
  for (let i = 0; i < 4; i++) {
    const d = (await store.nextJob(abort.signal))!;
    pulled.push(d.jobId);
    await d.ack();
  }
  assert.deepEqual(pulled.sort(), ["a=b/x", "globex/y", "x", "y"]);
  await assert.rejects(store.submit({ jobId: "z", scopeToTenant: true, input: tessera(1) }), /needs a tenant/);
});

test("a bad input file is refused at submit, naming the file, line and field", async (t) => {
  const store = await openStore(t);
  const input = enc.encode('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y", "max_tokens": -1}\n');
  await assert.rejects(
    store.submit({ jobId: "bad", input, fileName: "bad.jsonl" }),
    (err: unknown) =>
      err instanceof InputFileError &&
      /^bad\.jsonl: 1 bad line\(s\):\n {2}line 2: field "max_tokens"/.test(err.message),
  );
  assert.equal(await store.get("bad"), undefined);
  await assert.rejects(store.submit({ jobId: "a.b", input: tessera(1) }), /job id: must be/);
});

test("jobs are pulled highest priority first", async (t) => {
  const store = await openStore(t);
  await store.submit({ jobId: "low", priority: "low", input: tessera(1) });
  await store.submit({ jobId: "normal", input: tessera(1) });
  await store.submit({ jobId: "high", priority: "high", input: tessera(1) });
  await store.ensureConsumers(5000);
  const signal = new AbortController().signal;
  const order: string[] = [];
  for (let i = 0; i < 3; i++) {
    const d = (await store.nextJob(signal))!;
    order.push(d.jobId);
    await d.ack();
  }
  assert.deepEqual(order, ["high", "normal", "low"]);
});

test("a claim's results are checkpointed; a redelivered job resumes and the old claim is shut out", async (t) => {
  const store = await openStore(t);
  await store.submit({ jobId: "r", input: tessera(3) });
  await store.ensureConsumers(1000);
  const signal = new AbortController().signal;
  const d1 = (await store.nextJob(signal))!;
  assert.equal(d1.deliveryCount, 1);
  const c1 = await store.claim("r", "w1");
  assert.equal(c1.kind, "run");
  if (c1.kind !== "run") return;
  const line = (id: string) => ({
    promptId: id,
    line: JSON.stringify({ id }),
    promptTokens: 2,
    completionTokens: 3,
    failed: false,
  });
  await store.storeResults("r", c1.owner, [line("p0")]);
  // w1 stops calling working(): after the ack wait the job comes back.
  const d2 = (await store.nextJob(signal))!;
  assert.equal(d2.jobId, "r");
  assert.ok(d2.deliveryCount >= 2);
  const c2 = await store.claim("r", "w2");
  assert.equal(c2.kind, "run");
  if (c2.kind !== "run") return;
  assert.deepEqual(c2.state.doneIds, ["p0"]);
  assert.equal(c2.state.attempts, 2);
  await assert.rejects(store.storeResults("r", c1.owner, [line("p1")]), JobOwnershipLostError);
  await store.storeResults("r", c2.owner, [line("p1"), line("p2")]);
  const end = await store.finish("r", c2.owner, "completed");
  await d2.ack();
  assert.equal(end.status, "completed");
  assert.equal(end.promptsDone, 3);
  assert.equal(end.completionTokens, 9);
  assert.deepEqual(
    (await collect(store.results("r"))).map((l) => JSON.parse(l).id),
    ["p0", "p1", "p2"],
  );
  assert.equal((await store.claim("r", "w3")).kind, "skip");
});

test("results --follow and watch stream while the job runs; cancel of queued and running jobs", async (t) => {
  const store = await openStore(t);
  await store.submit({ jobId: "f", input: tessera(2) });
  const c = await store.claim("f", "w");
  assert.equal(c.kind, "run");
  if (c.kind !== "run") return;
  const seen: JobState[] = [];
  const watching = (async () => {
    for await (const s of store.watch("f")) seen.push(s);
  })();
  const following = collect(store.results("f", { follow: true }));
  const line = (id: string) => ({
    promptId: id,
    line: JSON.stringify({ id }),
    promptTokens: 1,
    completionTokens: 1,
    failed: false,
  });
  await store.storeResults("f", c.owner, [line("p0")]);
  await store.storeResults("f", c.owner, [line("p1")]);
  const cancelled = await store.cancel("f");
  assert.equal(cancelled.cancelRequested, true);
  assert.equal(cancelled.status, "running");
  await store.finish("f", c.owner, "cancelled");
  assert.deepEqual(
    (await following).map((l) => JSON.parse(l).id),
    ["p0", "p1"],
  );
  await watching;
  assert.equal(seen.at(-1)!.status, "cancelled");
  assert.ok(seen.some((s) => s.promptsDone === 1));

  await store.submit({ jobId: "q", input: tessera(1) });
  assert.equal((await store.cancel("q")).status, "cancelled");
  assert.equal((await store.claim("q", "w")).kind, "skip");
});
