/**
 * Issue 13, "one tenant can fill the JetStream store": through a
 * coordinator's job RPCs with bearer tokens (an in-process cluster and its
 * job worker), a tenant over its quota is refused RESOURCE_EXHAUSTED naming
 * its usage and limit while another tenant's jobs are submitted and run;
 * DeleteJob and `tessera jobs delete` remove a job's data, a tenant only its
 * own; the retention sweep deletes ended jobs (and objects of no job) past
 * the retention, not queued ones nor other tenants' inputs; on a private
 * nats-server whose store is full a submit gets RESOURCE_EXHAUSTED saying
 * so, the job worker pauses with one line per pause instead of a line per
 * job, and the queued jobs run once a delete makes room.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { JobStore, connectNats, jobKeyOfObject, registryBucket } from "@tessera/nats";
import { Code, Coordinator, RpcError, createClient, type Job } from "@tessera/proto";
import { collect, failure, startInProcessCluster, startPrivateNats, tempDir, tesseraJobFile } from "@tessera/testing";
import { createJobWorker, sweepJobs, type CoordinatorOptions } from "@tessera/coordinator";
import { formatBytes } from "@tessera/core";
import { runCli } from "./helpers.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A prefix, a tokens file (tenants acme and globex, admin ops), an
 * in-process cluster whose coordinator has NATS and `coordinator`'s options,
 * a client per token, and the test's own JobStore; cleaned up after.
 */
async function tenantCluster(t: TestContext, coordinator: Partial<CoordinatorOptions>, servers = SERVERS) {
  const prefix = `t${randomBytes(4).toString("hex")}`;
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
  const nc = await connectNats({ servers, name: "job-quotas-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  const cluster = await startInProcessCluster(t, {
    coordinator: { nats: servers, natsPrefix: prefix, tokensFile, ...coordinator },
  });
  const as = (tok: string) => {
    const c = createClient(Coordinator, cluster.address, {}, { token: tok });
    t.after(() => c.close());
    return c;
  };
  return { prefix, store, cluster, token, acme: as(token.acme), globex: as(token.globex), ops: as(admin) };
}

/** The last state WatchJob shows: the job's end. */
const ended = async (client: ReturnType<typeof createClient<typeof Coordinator>>, id: string) =>
  (await collect<Job>(client.watchJob({ id }))).at(-1)!;

test("quota: a tenant over its jobs or bytes quota gets RESOURCE_EXHAUSTED naming its usage and limit; another tenant's jobs are submitted and run; DeleteJob frees it, a tenant deletes only its own", async (t) => {
  const { prefix, store, cluster, acme, globex, ops } = await tenantCluster(t, {
    tenantMaxJobs: 2,
    tenantMaxBytes: 2000,
    jobRetentionMs: 86_400_000,
  });
  const job = (n: number) => enc.encode(tesseraJobFile(n));
  await acme.submitJob({ jobId: "a1", input: job(1), sampling: { maxTokens: 4 } });
  await acme.submitJob({ jobId: "a2", input: job(1), sampling: { maxTokens: 4 } });
  const overJobs = await failure(acme.submitJob({ jobId: "a3", input: job(1) }));
  assert.deepEqual(overJobs, {
    code: Code.RESOURCE_EXHAUSTED,
    message:
      "tenant acme: quota exceeded: 2 of its jobs are queued or running, its limit is 2; wait for one to end or cancel one",
  });
  assert.equal(await store.find("acme", "a3"), undefined, "nothing stored");
  // Another tenant, and an admin, are not affected.
  const g1 = await globex.submitJob({ jobId: "g1", input: job(2), sampling: { maxTokens: 4 } });
  assert.equal(g1.status, "queued");
  assert.equal((await ops.submitJob({ jobId: "o1", tenant: "acme", input: job(1) })).tenant, "acme");

  // The jobs run (a worker of this coordinator); an ended job shows when it expires.
  const worker = createJobWorker({
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    log: () => {},
  });
  t.after(() => worker.close());
  await worker.start();
  const g1End = await ended(globex, "g1");
  assert.equal(g1End.status, "completed");
  assert.equal(g1End.promptsDone, 2);
  assert.ok(g1End.resultBytes > 0n);
  assert.equal(Date.parse(g1End.expiresAt), Date.parse(g1End.finishedAt) + 86_400_000);
  await ended(acme, "a1");
  await ended(acme, "a2");
  await ended(ops, "o1");

  // Ended, acme's jobs still hold bytes: a large input is refused naming them.
  const usage = (await store.usage("acme")).bytes;
  const big = enc.encode(tesseraJobFile(40));
  assert.ok(usage + big.byteLength > 2000 && big.byteLength < 2000, `${usage} + ${big.byteLength}`);
  const overBytes = await failure(acme.submitJob({ jobId: "big", input: big }));
  assert.equal(overBytes.code, Code.RESOURCE_EXHAUSTED);
  assert.equal(
    overBytes.message,
    `tenant acme: quota exceeded: its jobs store ${formatBytes(usage)} (inputs and results) and this input adds ` +
      `${formatBytes(big.byteLength)}, over its limit of ${formatBytes(2000)}; delete finished jobs ` +
      "(tessera jobs delete ID) or wait for their retention to end",
  );

  // DeleteJob: another tenant's id is NOT_FOUND (as GetJob), the owner's deletes input, results and state.
  assert.deepEqual(await failure(globex.deleteJob({ id: "a1" })), {
    code: Code.NOT_FOUND,
    message: 'job "a1" not found',
  });
  const a1 = (await store.find("acme", "a1"))!;
  const deleted = await acme.deleteJob({ id: "a1" });
  assert.deepEqual([deleted.id, deleted.status], ["a1", "completed"]);
  assert.deepEqual(await failure(acme.getJob({ id: "a1" })), { code: Code.NOT_FOUND, message: 'job "a1" not found' });
  assert.deepEqual(await failure(acme.deleteJob({ id: "a1" })), {
    code: Code.NOT_FOUND,
    message: 'job "a1" not found',
  });
  const left = (await store.objects()).map((o) => o.name);
  assert.ok(!left.includes(a1.inputObject) && !a1.chunks.some((c) => left.includes(c)), left.join(" "));
  assert.equal((await globex.getJob({ id: "g1" })).status, "completed", "globex's job is untouched");
  // With a2 and o1 deleted too, acme's big job fits.
  await acme.deleteJob({ id: "a2" });
  await ops.deleteJob({ id: "o1" });
  assert.equal((await acme.submitJob({ jobId: "big", input: big, sampling: { maxTokens: 2 } })).status, "queued");
  assert.equal((await ended(acme, "big")).status, "completed");
});

test("quota race: 8 SubmitJobs of one tenant at once with --tenant-max-jobs 1: exactly one accepted, 7 RESOURCE_EXHAUSTED; another tenant's submit at the same time is accepted", async (t) => {
  const { store, acme, globex } = await tenantCluster(t, { tenantMaxJobs: 1 });
  const input = enc.encode(tesseraJobFile(1));
  const calls = Array.from({ length: 8 }, (_, i) => acme.submitJob({ jobId: `r${i}`, input }));
  const other = globex.submitJob({ jobId: "g", input });
  const results = await Promise.allSettled(calls);
  const accepted = results.filter((r) => r.status === "fulfilled");
  const refused = results.flatMap((r) => (r.status === "rejected" ? [RpcError.from(r.reason)] : []));
  assert.equal(accepted.length, 1, `accepted: ${accepted.length}`);
  assert.deepEqual(
    refused.map((e) => e.code),
    Array.from({ length: 7 }, () => Code.RESOURCE_EXHAUSTED),
    refused.map((e) => e.message).join("; "),
  );
  assert.equal((await store.usage("acme")).jobs, 1);
  assert.equal((await other).status, "queued");
});

test("`tessera jobs delete ID` removes a job (straight to NATS, and through --cluster for a tenant: another's is not found)", async (t) => {
  const { prefix, store, cluster, token } = await tenantCluster(t, {});
  await store.submit({ jobId: "n1", input: enc.encode(tesseraJobFile(1)) });
  const nats = ["--nats", SERVERS, "--nats-prefix", prefix];
  const removed = await runCli(["jobs", "delete", "n1", ...nats]);
  assert.equal(removed.code, 0, removed.stderr);
  assert.match(removed.stderr, /job n1 deleted \(was cancelled; input \d+ bytes\)/);
  assert.equal(await store.get("n1"), undefined);
  const again = await runCli(["jobs", ...nats, "delete", "n1"]);
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /job "n1" not found/);

  await store.submit({ jobId: "c1", tenant: "acme", scopeToTenant: true, input: enc.encode(tesseraJobFile(1)) });
  const grpc = (tok: string) => ["--cluster", cluster.address, "--plaintext", "--token", tok];
  const notTheirs = await runCli(["jobs", "delete", "c1", ...grpc(token.globex)]);
  assert.notEqual(notTheirs.code, 0);
  assert.match(notTheirs.stderr, /job "c1" not found/);
  const mine = await runCli(["jobs", "delete", "c1", ...grpc(token.acme)]);
  assert.equal(mine.code, 0, mine.stderr);
  assert.equal(await store.find("acme", "c1"), undefined);
});

test("retention: a sweep deletes ended jobs past the retention and objects of no job past their grace, not queued or recent jobs nor a tenant's input under <tenant>/<id>, nor a job submitted again since it listed the states; the worker sweeps by itself", async (t) => {
  const { prefix, store, cluster } = await tenantCluster(t, {});
  const input = enc.encode(tesseraJobFile(1));
  await store.submit({ jobId: "old-done", input });
  await store.submit({ jobId: "old-failed", input });
  await store.submit({ jobId: "queued", input });
  await store.submit({ jobId: "acme-job", tenant: "acme", scopeToTenant: true, input });
  await store.cancel("old-done");
  const claim = await store.claim("old-failed", "w");
  if (claim.kind !== "run") assert.fail(claim.reason);
  await store.finish("old-failed", claim.owner, "failed", "INVALID_ARGUMENT: bad");
  await store.cancel("acme-job");
  const obj = await new Objm(jetstream(store.nc)).open(store.names.dataBucket);
  await obj.putBlob({ name: "gone/input-00aa.jsonl" }, input);

  // Retention 1 h, "now" 2 h on: the three ended jobs go (acme's input under acme/acme-job with it), the queued one stays.
  const now = Date.now() + 7_200_000;
  const swept = await sweepJobs(store, { retentionMs: 3_600_000, now, orphanGraceMs: 3_600_000 });
  assert.deepEqual(swept.jobs.sort(), ["acme-job", "old-done", "old-failed"]);
  assert.deepEqual(swept.orphans, ["gone/input-00aa.jsonl"]);
  assert.deepEqual(
    (await store.list()).map((s) => s.id),
    ["queued"],
  );
  assert.deepEqual(
    (await store.objects()).map((o) => jobKeyOfObject(o.name)),
    ["queued"],
  );
  // A tenant's queued job's input (under acme/<id>, its key <id>) is no orphan.
  await store.submit({ jobId: "a2", tenant: "acme", scopeToTenant: true, input });
  assert.deepEqual(await sweepJobs(store, { retentionMs: 1, now, orphanGraceMs: 0 }), { jobs: [], orphans: [] });

  // A sweep whose list of states is stale (the expired job "x" deleted and
  // submitted again since) leaves the new "x" and its input alone.
  await store.submit({ jobId: "x", input });
  await store.cancel("x");
  const stale = await store.list();
  await store.delete("x");
  await store.submit({ jobId: "x", input });
  const staleStore = Object.create(store, { list: { value: () => Promise.resolve(stale) } }) as JobStore;
  assert.deepEqual((await sweepJobs(staleStore, { retentionMs: 1, now, orphanGraceMs: 0 })).jobs, []);
  assert.equal((await store.get("x"))?.status, "queued");
  assert.ok((await store.objects()).some((o) => jobKeyOfObject(o.name) === "x"));
  await store.delete("x");

  // The job worker sweeps on its own: a job that completes is gone one retention later.
  const lines: string[] = [];
  const worker = createJobWorker({
    nats: SERVERS,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    retentionMs: 500,
    sweepMs: 200,
    log: (l) => lines.push(l),
  });
  t.after(() => worker.close());
  await worker.start();
  for (let i = 0; i < 300 && (await store.list()).length > 0; i++) await sleep(100);
  assert.deepEqual(await store.list(), [], lines.join("\n"));
  assert.ok(
    lines.some((l) => /^jobs: retention: deleted \d+ jobs ended over 500ms ago/.test(l)),
    lines.join("\n"),
  );
});

test("a full store: SubmitJob is RESOURCE_EXHAUSTED saying so; the worker pauses with one line per pause, not one per job, and the queued jobs run once a delete makes room", async (t) => {
  const nats = await startPrivateNats({ maxFileStore: 512 * 1024 });
  const { prefix, store, cluster, globex, ops } = await tenantCluster(t, {}, nats.servers).catch(
    async (err: unknown) => {
      await nats.stop();
      throw err;
    },
  );
  t.after(() => nats.stop()); // after the cluster's and the store's clean-up
  // globex's jobs wait in the queue (the consumers declared, as a running worker would have them).
  await store.ensureConsumers(3000);
  for (const id of ["q1", "q2", "q3"])
    await globex.submitJob({ jobId: id, input: enc.encode(tesseraJobFile(1)), sampling: { maxTokens: 2 } });
  // Another tenant fills the store.
  const filler = enc.encode(tesseraJobFile(400));
  let n = 0;
  for (; n < 100; n++) {
    const full = await store.submit({ jobId: `hog${n}`, tenant: "hog", input: filler }).then(
      () => false,
      () => true,
    );
    if (full) break;
  }
  assert.ok(n < 100, "the store filled");
  const refused = await failure(globex.submitJob({ jobId: "late", input: enc.encode(tesseraJobFile(1)) }));
  assert.deepEqual(refused, {
    code: Code.RESOURCE_EXHAUSTED,
    message:
      'job "late": the job store (NATS JetStream) is full; nothing was stored. Try again later; the operator ' +
      "frees room by deleting jobs or lowering --job-retention",
  });

  // The worker: no line per job and no job failed while the store is full; a pause line now and then.
  const lines: string[] = [];
  const worker = createJobWorker({
    nats: nats.servers,
    natsPrefix: prefix,
    coordinator: cluster.coordinator,
    ackWaitMs: 3000,
    log: (l) => lines.push(l),
  });
  t.after(() => worker.close());
  await worker.start();
  await sleep(4000);
  const pauses = lines.filter((l) => l.startsWith("jobs: the job store is full ("));
  // One line per pause, each twice as long (however long the 4 s took): not a line per refused job.
  assert.ok(pauses.length >= 1, lines.join("\n"));
  assert.deepEqual(
    pauses.map((l) => /insufficient resources\); \d+ writes refused; pausing pulls for (\d+)s$/.exec(l)?.[1]),
    pauses.map((_, i) => String(Math.min(30, 2 ** i))),
    lines.join("\n"),
  );
  assert.deepEqual(
    lines.filter((l) => /^jobs: job q\d/.test(l)),
    [],
    "no per-job error lines",
  );
  for (const id of ["q1", "q2", "q3"]) assert.equal((await store.get(id))!.status, "queued");

  // An operator deletes the hog's jobs: the queued jobs run.
  for (let i = 0; i < n; i++) await ops.deleteJob({ id: `hog${i}` });
  for (const id of ["q1", "q2", "q3"]) assert.equal((await ended(globex, id)).status, "completed", lines.join("\n"));
});
