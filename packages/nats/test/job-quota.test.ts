/**
 * Issue 13, "one tenant can fill the JetStream store": per-tenant quotas
 * (bytes stored, jobs not ended), deletion of a job's data, and a full
 * store's error. Against the real NATS at 127.0.0.1:4222 under a prefix
 * per test; the full store on a private nats-server with a small
 * `max_file_store`.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { formatBytes } from "@tessera/core";
import { startPrivateNats } from "@tessera/testing";
import {
  JobStore,
  JobStoreFullError,
  QuotaExceededError,
  connectNats,
  isStoreFull,
  jobKeyOfObject,
  type TenantQuota,
} from "../src/index.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();

async function openStore(t: TestContext, servers = SERVERS, prefix = `t${randomBytes(4).toString("hex")}`) {
  const nc = await connectNats({ servers, name: "job-quota-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  return store;
}

const tessera = (n: number, pad = 0) =>
  enc.encode(
    Array.from({ length: n }, (_, i) => JSON.stringify({ id: `p${i}`, prompt: `prompt ${i}${"x".repeat(pad)}` })).join(
      "\n",
    ),
  );

/** What a refused call threw. */
async function thrown(p: Promise<unknown>): Promise<Error> {
  return p.then(
    () => assert.fail("expected a refusal"),
    (err: unknown) => err as Error,
  );
}

test("jobKeyOfObject: an input or result chunk's job key, telling a job's chunks from a tenant's job named like them", () => {
  assert.equal(jobKeyOfObject("abc/input-0a1b2c.jsonl"), "abc");
  assert.equal(jobKeyOfObject("abc/results/000003-host_1-ab12.jsonl"), "abc");
  // Tenant abc's job "results" (key abc/results): its input and its chunks.
  assert.equal(jobKeyOfObject("abc/results/input-0a1b2c.jsonl"), "abc/results");
  assert.equal(jobKeyOfObject("abc/results/results/000000-w-1.jsonl"), "abc/results");
  for (const other of ["abc", "abc/input-.jsonl", "abc/results/12-w.jsonl", "abc/notes.txt"])
    assert.equal(jobKeyOfObject(other), undefined, other);
});

test("quota: a tenant past its jobs or bytes quota gets RESOURCE_EXHAUSTED naming its usage and limit, another tenant is unaffected; usage counts results and survives a reopen", async (t) => {
  const store = await openStore(t);
  const quota: TenantQuota = { maxJobs: 2, maxBytes: 3000 };
  const submit = (tenant: string, jobId: string, input = tessera(2)) =>
    store.submit({ jobId, tenant, scopeToTenant: true, quota, input });
  const in1 = tessera(2).byteLength;
  await submit("acme", "a1");
  await submit("acme", "a2");

  // A third unfinished job: refused, naming the count and the limit; nothing stored.
  const jobs = await thrown(submit("acme", "a3"));
  assert.ok(jobs instanceof QuotaExceededError, String(jobs));
  assert.deepEqual([jobs.rpcCode, jobs.kind, jobs.usage, jobs.limit], [8, "jobs", 2, 2]);
  assert.equal(
    jobs.message,
    "tenant acme: quota exceeded: 2 of its jobs are queued or running, its limit is 2; wait for one to end or cancel one",
  );
  assert.equal(await store.find("acme", "a3"), undefined);
  assert.deepEqual(
    (await store.objects()).map((o) => jobKeyOfObject(o.name)).sort(),
    ["acme/a1", "acme/a2"],
    "no input of the refused job (a tenant's inputs are under <tenant>/<id>)",
  );
  // The same id again is the job it names, quota or not; another tenant submits as before.
  assert.equal((await submit("acme", "a1")).created, false);
  assert.equal((await submit("globex", "a3")).created, true);
  assert.equal((await submit("globex", "g2")).created, true);

  // a1 runs: its results count toward acme's bytes; a2 ends (cancelled): a job slot frees, its bytes stay.
  await store.cancel("a2");
  const claim = await store.claim("a1", "w");
  assert.equal(claim.kind, "run");
  const owner = claim.kind === "run" ? claim.owner : "";
  const line = JSON.stringify({ id: "p0", completion: "y".repeat(1500) });
  await store.storeResults("a1", owner, [
    { promptId: "p0", line, promptTokens: 3, completionTokens: 9, failed: false },
  ]);
  await store.finish("a1", owner, "completed");
  const resultBytes = enc.encode(line + "\n").byteLength;
  assert.equal((await store.get("a1"))!.resultBytes, resultBytes);
  assert.deepEqual(await store.usage("acme"), { bytes: 2 * in1 + resultBytes, jobs: 0 });

  const big = tessera(2, 1000);
  const bytes = await thrown(submit("acme", "a4", big));
  assert.ok(bytes instanceof QuotaExceededError);
  assert.deepEqual([bytes.rpcCode, bytes.kind, bytes.usage, bytes.limit], [8, "bytes", 2 * in1 + resultBytes, 3000]);
  assert.equal(
    bytes.message,
    `tenant acme: quota exceeded: its jobs store ${formatBytes(2 * in1 + resultBytes)} (inputs and results) and ` +
      `this input adds ${formatBytes(big.byteLength)}, over its limit of ${formatBytes(3000)}; delete finished ` +
      "jobs (tessera jobs delete ID) or wait for their retention to end",
  );
  await store.cancel("g2");
  assert.equal((await submit("globex", "g3", big)).created, true, "globex's own bytes are under its quota");

  // Usage is read from the stored states: a fresh store on a fresh connection (a restarted coordinator) agrees.
  const again = await JobStore.open(await connectNats({ servers: SERVERS, name: "job-quota-test-2" }), {
    prefix: store.names.stream.replace(/_JOBS$/, "").toLowerCase(),
  });
  t.after(() => again.nc.close());
  assert.deepEqual(await again.usage("acme"), { bytes: 2 * in1 + resultBytes, jobs: 0 });
  assert.ok(
    (await thrown(again.submit({ jobId: "a4", tenant: "acme", quota, input: big }))) instanceof QuotaExceededError,
  );

  // Deleting a finished job frees its bytes.
  await store.delete("a1");
  assert.deepEqual(await store.usage("acme"), { bytes: in1, jobs: 0 });
  assert.equal((await submit("acme", "a4", big)).created, true);
});

test("delete removes a job's input, recorded and unrecorded result chunks and state, nothing of other jobs; a queued job is cancelled first, a running one waited for", async (t) => {
  const store = await openStore(t);
  // Job "abc", and tenant abc's job "results" (key abc/results, since job "results" is taken).
  await store.submit({ jobId: "abc", input: tessera(2) });
  await store.submit({ jobId: "results", tenant: "other", input: tessera(1) });
  const scoped = await store.submit({ jobId: "results", tenant: "abc", scopeToTenant: true, input: tessera(1) });
  assert.equal(scoped.job.id, "abc/results");
  const claim = await store.claim("abc", "w");
  const owner = claim.kind === "run" ? claim.owner : assert.fail(claim.reason);
  const r = (id: string) => ({
    promptId: id,
    line: `{"id":"${id}"}`,
    promptTokens: 1,
    completionTokens: 1,
    failed: false,
  });
  await store.storeResults("abc", owner, [r("p0")]);
  // A chunk a dead worker wrote but never recorded.
  const obj = await new Objm(jetstream(store.nc)).open(store.names.dataBucket);
  await obj.putBlob({ name: "abc/results/000001-dead_worker-1.jsonl" }, enc.encode('{"id":"p1"}\n'));
  await store.finish("abc", owner, "completed");
  const before = (await store.objects()).map((o) => o.name);
  assert.equal(before.filter((n) => jobKeyOfObject(n) === "abc").length, 3, before.join(" "));

  const last = await store.delete("abc");
  assert.equal(last?.status, "completed");
  assert.equal(await store.get("abc"), undefined);
  assert.deepEqual(
    (await store.objects()).map((o) => o.name).sort(),
    before.filter((n) => jobKeyOfObject(n) !== "abc").sort(),
    "only abc's objects are gone",
  );
  assert.deepEqual(
    (await store.list()).map((s) => s.id),
    ["results", "abc/results"],
  );
  assert.equal(await store.delete("abc"), undefined, "deleting again: nothing there");

  // A queued job: cancelled (its queue message removed), then deleted.
  const queued = await store.delete("results");
  assert.equal(queued?.status, "cancelled");
  await store.ensureConsumers(5000);
  const pull = new AbortController();
  setTimeout(() => pull.abort(), 1500);
  const next = await store.nextJob(pull.signal, 200);
  assert.equal(next?.jobId, "abc/results", "the deleted job's message is gone; the other's is there");
  next!.nak();

  // A running job: cancel requested, its worker (here the test) stops it, then it is deleted.
  const running = await store.claim("abc/results", "w2");
  const runOwner = running.kind === "run" ? running.owner : assert.fail(running.reason);
  const stopping = (async () => {
    for await (const s of store.watch("abc/results"))
      if (s.cancelRequested) return store.finish("abc/results", runOwner, "cancelled");
  })();
  const deleted = await store.delete("abc/results");
  await stopping;
  assert.equal(deleted?.status, "cancelled");
  assert.deepEqual(await store.list(), []);
  assert.deepEqual(await store.objects(), []);
});

test("a full store (nats-server max_file_store): submit fails JobStoreFullError RESOURCE_EXHAUSTED naming the job, nothing of it stays; a delete makes room", async (t) => {
  const nats = await startPrivateNats({ maxFileStore: 256 * 1024 });
  const store = await openStore(t, nats.servers).catch(async (err: unknown) => {
    await nats.stop();
    throw err;
  });
  t.after(() => nats.stop()); // after the store's clean-up (hooks run in order)
  const input = tessera(30, 1000);
  let full: Error | undefined;
  let n = 0;
  for (; n < 30 && !full; n++) {
    full = await store.submit({ jobId: `fill${n}`, tenant: "acme", input }).then(
      () => undefined,
      (err: Error) => err,
    );
  }
  assert.ok(full instanceof JobStoreFullError, `${String(full)} after ${n} submits`);
  const id = `fill${n - 1}`;
  assert.equal(full.rpcCode, 8);
  assert.ok(isStoreFull(full));
  assert.equal(
    full.message,
    `job "${id}": the job store (NATS JetStream) is full; nothing was stored. Try again later; the operator ` +
      "frees room by deleting jobs or lowering --job-retention",
  );
  assert.match(String((full.cause as Error).message), /insufficient resources/);
  assert.equal(await store.get(id), undefined);
  assert.ok(!(await store.objects()).some((o) => jobKeyOfObject(o.name) === id), "no input of the refused job");
  assert.equal((await store.list()).length, n - 1);

  // Deleting works in a full store (no new writes), and frees room for the next job. (Two: the
  // refused put's cleanup, a filtered purge, is not taken off the server's storage in use by 2.9.)
  await store.delete("fill0");
  await store.delete("fill1");
  assert.equal((await store.submit({ jobId: "after", tenant: "globex", input })).created, true);
});
