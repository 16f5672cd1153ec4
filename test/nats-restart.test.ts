/**
 * Issue 5, "NATS restarts": a private nats-server (JetStream on a temp
 * store dir, a free loopback port) is killed while a coordinator's job
 * worker runs a queue of jobs, and started again on the same port and
 * store. The worker reconnects; every job acknowledged by JetStream before
 * the restart is still there and ends "completed", each prompt answered
 * exactly once with the tokens of a direct Generate, and a job submitted
 * after the restart is pulled too. A submit while NATS is down: a fresh
 * connection (the CLI's submit) fails at once naming the servers; one on a
 * connection that is reconnecting fails with nats.js's TimeoutError 5 s
 * after it was sent (nats.js drops what it buffered when it redials, so
 * the request is never answered even once NATS is back), and submitting the
 * same id again succeeds.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { generateRequest, parseBatchInput } from "@tessera/core";
import { JobStore, NatsError, connectNats, type JobState } from "@tessera/nats";
import type { Result } from "@tessera/proto";
import { generate, startInProcessCluster, tempDir, tesseraJobFile, freePort } from "@tessera/testing";
import { createJobWorker } from "@tessera/coordinator";
import { runCli } from "./helpers.js";

const NATS_SERVER = "/usr/sbin/nats-server";
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A private nats-server with JetStream storing in `storeDir`; `start()`
 * resolves once a client can connect, `kill()` once the process has exited.
 * Its stderr is kept for failure messages.
 */
function privateNats(port: number, storeDir: string) {
  let proc: ChildProcess | undefined;
  let output = "";
  return {
    servers: `127.0.0.1:${port}`,
    output: () => output,
    async start(): Promise<void> {
      const p = spawn(NATS_SERVER, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      p.stderr!.setEncoding("utf8").on("data", (c: string) => (output = (output + c).slice(-20_000)));
      proc = p;
      for (let i = 0; i < 200; i++) {
        if (p.exitCode !== null) break;
        const up = await connectNats({ servers: `127.0.0.1:${port}`, name: "probe", timeoutMs: 200 }).then(
          (nc) => nc.close().then(() => true),
          () => false,
        );
        if (up) return;
        await sleep(50);
      }
      throw new Error(`${NATS_SERVER} did not start on 127.0.0.1:${port}:\n${output}`);
    },
    async kill(signal: NodeJS.Signals): Promise<void> {
      const p = proc;
      proc = undefined;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once("exit", r));
      p.kill(signal);
      await exited;
    },
  };
}

/** The Generate a job's worker makes, called directly (all prompts, one call). */
async function direct(address: string, s: JobState, input: string): Promise<Map<string, Result>> {
  const { prompts } = parseBatchInput("input", input);
  return (await generate(address, generateRequest(prompts, s.sampling))).results;
}

/** Every prompt exactly once, with the tokens of the direct run. */
function assertResults(id: string, got: Record<string, any>[], want: Map<string, Result>) {
  assert.deepEqual(got.map((l) => l["id"]).sort(), [...want.keys()].sort(), `${id}: each prompt answered exactly once`);
  for (const l of got) {
    const w = want.get(l["id"])!;
    assert.equal(l["finish_reason"], w.finishReason, `${id}/${l["id"]}`);
    assert.deepEqual(l["completion_token_ids"], w.completionTokenIds, `${id}/${l["id"]}: tokens`);
    assert.equal(l["completion"], w.completion, `${id}/${l["id"]}`);
  }
}

/** Polls the job's state (a watch would have to survive the restart itself) until every job has ended. */
async function waitAllEnded(store: JobStore, ids: string[], timeoutMs: number): Promise<JobState[]> {
  const deadline = Date.now() + timeoutMs;
  let last: (JobState | undefined)[] = [];
  for (;;) {
    last = await Promise.all(ids.map((id) => store.get(id).catch(() => undefined)));
    if (last.every((s) => s && ["completed", "failed", "cancelled"].includes(s.status))) return last as JobState[];
    if (Date.now() > deadline) {
      const where = last.map((s, i) => `${ids[i]}: ${s ? `${s.status} ${s.promptsDone}/${s.promptsTotal}` : "?"}`);
      throw new Error(`jobs not ended after ${timeoutMs} ms: ${where.join(", ")}`);
    }
    await sleep(100);
  }
}

test("NATS killed and restarted mid-run: the worker reconnects, no acknowledged job is lost, tokens as a direct Generate", async (t: TestContext) => {
  const rejections: unknown[] = [];
  const onRejection = (e: unknown) => rejections.push(e);
  process.on("unhandledRejection", onRejection);
  t.after(() => void process.off("unhandledRejection", onRejection));

  // Stopped last-registered first: the worker before NATS, NATS before its store dir.
  const cleanups: (() => Promise<unknown>)[] = [];
  t.after(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  const dir = await tempDir("tessera-nats-restart-");
  cleanups.push(() => dir.remove());
  const nats = privateNats(await freePort(), join(dir.path, "js"));
  cleanups.push(() => nats.kill("SIGKILL"));
  await nats.start();
  const servers = nats.servers;

  const cluster = await startInProcessCluster(t, { coordinator: { maxBatchSequences: 4 } });
  const nc = await connectNats({ servers, name: "nats-restart-test" });
  cleanups.push(() => nc.close());
  const store = await JobStore.open(nc, { prefix: "restart" });

  // Acknowledged before the restart: submit resolved with a stream sequence.
  const inputs = new Map<string, string>();
  for (let i = 0; i < 4; i++) {
    const id = `j${i}`;
    inputs.set(id, tesseraJobFile(8));
    const r = await store.submit({
      jobId: id,
      input: enc.encode(inputs.get(id)!),
      sampling: { maxTokens: 32, temperature: 0 },
    });
    assert.equal(r.created, true);
    assert.ok(r.job.streamSeq !== undefined, `${id}: published`);
  }

  const log: string[] = [];
  const worker = createJobWorker({
    nats: servers,
    natsPrefix: "restart",
    coordinator: cluster.coordinator,
    ackWaitMs: 3000,
    chunkResults: 2,
    flushMs: 50,
    log: (l) => log.push(`${new Date().toISOString()} ${l}`),
  });
  cleanups.push(() => worker.close());
  const started = Date.now();
  await worker.start();

  // The first job is running with some results stored.
  let atKill: JobState | undefined;
  for (let i = 0; !atKill; i++) {
    const s = (await store.get("j0"))!;
    if (s.status === "running" && s.promptsDone > 0 && s.promptsDone < s.promptsTotal) atKill = s;
    else if (s.status !== "queued" && s.status !== "running") assert.fail(`j0 ${s.status} before the kill`);
    assert.ok(i < 3000, "j0 did not start");
    await sleep(10);
  }
  const killedAt = Date.now();
  await nats.kill("SIGKILL");
  const down = Date.now();

  // While NATS is down: a fresh connection (the CLI's submit) fails naming the servers.
  const jobFile = join(dir.path, "down.jsonl");
  await writeFile(jobFile, tesseraJobFile(3));
  await assert.rejects(
    connectNats({ servers, name: "submit-while-down", timeoutMs: 1000 }),
    (e: unknown) => e instanceof NatsError && e.message.startsWith(`NATS at ${servers}: cannot connect`),
  );
  const cliStarted = Date.now();
  const cli = await runCli(["submit", jobFile, "--job-id", "cli-down", "--nats", servers, "--nats-prefix", "restart"]);
  t.diagnostic(`CLI submit while down: exit ${cli.code} after ${Date.now() - cliStarted} ms: ${cli.stderr.trim()}`);
  assert.equal(cli.code, 1);
  assert.match(cli.stderr, new RegExp(`NATS at ${servers.replace(/\./g, "\\.")}: cannot connect`));
  const downInput = tesseraJobFile(3);
  const submitAt = Date.now();
  const downSubmit = store
    .submit({ jobId: "down", input: enc.encode(downInput), sampling: { maxTokens: 32, temperature: 0 } })
    .then(
      (r) => ({ ok: true as const, r, at: Date.now() }),
      (e: unknown) => ({ ok: false as const, e, at: Date.now() }),
    );
  await sleep(Math.max(0, 1000 - (Date.now() - down)));
  await nats.start();
  const upAt = Date.now();
  t.diagnostic(
    `j0 at ${atKill.promptsDone}/${atKill.promptsTotal} prompts when NATS was SIGKILLed ${killedAt - started} ms after the worker started; down ${upAt - down} ms`,
  );

  // A submit on the store's reconnecting connection: its first request is
  // dropped when nats.js redials (it empties its outbound buffer at each
  // dial), so it fails with TimeoutError after the JetStream request timeout
  // (5 s) even though NATS is back. Submitting the same id again recovers
  // (at most one job per id). Accept success too, should nats.js change.
  const submitted = await downSubmit;
  if (submitted.ok) {
    t.diagnostic(
      `submit on the reconnecting connection waited and succeeded ${submitted.at - upAt} ms after the restart`,
    );
  } else {
    const e = submitted.e as Error;
    t.diagnostic(
      `submit on the reconnecting connection (sent ${submitAt - down} ms into the downtime) failed ${submitted.at - upAt} ms after the restart: ${e.name}: ${e.message}`,
    );
    assert.equal(e.name, "TimeoutError");
    const again = await store.submit({
      jobId: "down",
      input: enc.encode(downInput),
      sampling: { maxTokens: 32, temperature: 0 },
    });
    t.diagnostic(`submitted again after the restart: created ${again.created}`);
  }
  inputs.set("down", downInput);

  const ids = [...inputs.keys()];
  let ends: JobState[];
  try {
    ends = await waitAllEnded(store, ids, 90_000);
  } catch (err) {
    for (const l of log) t.diagnostic(`worker: ${l}`);
    throw err;
  }
  t.diagnostic(`all ended ${Date.now() - upAt} ms after the restart`);
  for (const l of log) t.diagnostic(`worker: ${l}`);
  for (const s of ends) {
    const ms = Date.parse(s.finishedAt!) - Date.parse(s.startedAt!);
    t.diagnostic(`${s.id}: ${s.status}, attempts ${s.attempts}, ${s.promptsDone}/${s.promptsTotal} prompts, ${ms} ms`);
  }
  for (const s of ends) assert.equal(s.status, "completed", `${s.id}: ${s.error}`);

  // Every job acknowledged before the restart is still listed, with its message's sequence.
  const listed = await store.list();
  assert.deepEqual(listed.map((s) => s.id).sort(), ids.sort());
  for (const s of listed) assert.ok(s.streamSeq !== undefined, `${s.id}: no stream sequence`);
  for (const s of ends) {
    assert.equal(s.promptsDone, s.promptsTotal);
    const got: Record<string, any>[] = [];
    for await (const l of store.results(s.id)) got.push(JSON.parse(l));
    assertResults(s.id, got, await direct(cluster.address, s, inputs.get(s.id)!));
  }
  assert.deepEqual(rejections, [], "no unhandled rejection");
});
