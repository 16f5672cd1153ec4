/**
 * Issue 13, "a hung gpu-node stalls the job; a paused coordinator declares
 * every node lost": child-process clusters on the bundled stories260K.
 *
 * - The gpu-node is SIGSTOPped mid-decode and left stopped: the job ends
 *   with a named DEADLINE_EXCEEDED error within --retry-timeout + the step
 *   deadline, instead of hanging.
 * - The gpu-node is SIGSTOPped past the step deadline and SIGCONTed within
 *   --retry-timeout: it is marked lost, the step is re-sent once it answers
 *   again, and the tokens are those of an undisturbed run (the reference).
 * - The coordinator (nodes in the NATS registry) is SIGSTOPped mid-decode
 *   for longer than --node-lost-after and the step deadline, then
 *   SIGCONTed: no node is declared lost, no sequence moves (no KV cache is
 *   rebuilt, no step re-sent), and the tokens are the reference's.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { jetstreamManager } from "@nats-io/jetstream";
import { connectNats, registryBucket } from "@tessera/nats";
import { KvPlacement, type GenerateEvent } from "@tessera/proto";
import type { LocalCluster, Role } from "@tessera/cli";
import { generate } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const PROMPTS = ["", "Once upon a time", "The dog", "Lily saw a"];
/** One sequence in the batch at a time: the job is still running when its first result arrives. */
const ONE_AT_A_TIME = ["--max-batch", "1"];

const request = () => ({
  prompts: PROMPTS.map((prompt, i) => ({ id: `p${i}`, prompt })),
  sampling: { temperature: 0, maxTokens: 200 },
  kv: KvPlacement.MEMORY,
});

/** Every line `role`'s process writes to stderr from now on. */
function follow(cluster: LocalCluster, role: Role): string[] {
  const lines: string[] = [];
  let partial = "";
  cluster.node(role).child.stderr!.on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop()!;
    lines.push(...parts);
  });
  return lines;
}

/**
 * SIGSTOPs `role` when the first prompt's result arrives (with --max-batch
 * 1 the others have not run yet: the job is mid-run); SIGCONTs it after
 * `ms` (never when undefined).
 */
function stopMidDecode(cluster: LocalCluster, role: Role, t: TestContext, ms?: number) {
  const child = cluster.node(role).child;
  const state: { stoppedAt?: number; firstId?: string; resumed?: Promise<void> } = {};
  t.after(() => child.kill("SIGCONT"));
  const onEvent = (ev: GenerateEvent) => {
    if (state.stoppedAt !== undefined || ev.event.case !== "result") return;
    child.kill("SIGSTOP");
    state.stoppedAt = Date.now();
    state.firstId = ev.event.value.id;
    if (ms !== undefined) {
      state.resumed = new Promise((r) => setTimeout(r, ms)).then(() => void child.kill("SIGCONT"));
    }
  };
  return { state, onEvent };
}

/** Token ids of every prompt of an undisturbed run on `cluster`. */
async function calmRun(cluster: LocalCluster): Promise<Map<string, number[]>> {
  const calm = await generate(cluster.address, request());
  const out = new Map<string, number[]>();
  for (const [id, r] of calm.results) {
    assert.equal(r.error, "", `${id}: ${r.error}`);
    out.set(id, r.completionTokenIds);
  }
  return out;
}

test("a gpu-node hung for good: the job fails with a named DEADLINE_EXCEEDED error within --retry-timeout + the step deadline", async (t) => {
  const deadlineMs = 1500;
  const retryMs = 4000;
  const cluster = await startTestCluster({
    flags: {
      coordinator: [...ONE_AT_A_TIME, "--step-deadline", String(deadlineMs), "--retry-timeout", String(retryMs)],
    },
  });
  t.after(() => cluster.stop(1000));
  const log = follow(cluster, "coordinator");
  const gpu = cluster.node("gpu").address;
  const hang = stopMidDecode(cluster, "gpu", t);
  // Bounded, so that a job that hangs fails this test instead of timing it out.
  const outcome = await Promise.race([
    generate(cluster.address, request(), hang.onEvent),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error("the job hung for 90 s")), 90_000).unref()),
  ]);
  const tookMs = Date.now() - hang.state.stoppedAt!;
  assert.equal(outcome.results.size, PROMPTS.length);
  for (const [id, r] of outcome.results) {
    if (id === hang.state.firstId) continue; // answered before the gpu-node hung
    assert.match(
      r.error,
      new RegExp(
        `DEADLINE_EXCEEDED: gpu-node ${gpu} did not answer step \\d+ within ${deadlineMs} ms nor a health check`,
      ),
      id,
    );
  }
  // The retry timeout, the deadline, a health check (1 s) and a backoff
  // step (2 s) on a loaded machine: far from a hang.
  assert.ok(tookMs < retryMs + deadlineMs + 15_000, `the job ended ${tookMs} ms after the gpu-node hung`);
  assert.ok(
    log.some((l) => l.includes(`cluster: gpu-node ${gpu} lost (DEADLINE_EXCEEDED`)),
    "the gpu-node is marked lost",
  );
});

test("a gpu-node hung past the step deadline and resumed within --retry-timeout: marked lost, back, and the tokens are undisturbed", async (t) => {
  const deadlineMs = 1500;
  const cluster = await startTestCluster({
    flags: { coordinator: [...ONE_AT_A_TIME, "--step-deadline", String(deadlineMs)] },
  });
  t.after(() => cluster.stop(1000));
  const calm = await calmRun(cluster);
  const log = follow(cluster, "coordinator");
  const gpu = cluster.node("gpu").address;
  const hang = stopMidDecode(cluster, "gpu", t, deadlineMs + 2500);
  const stormy = await generate(cluster.address, request(), hang.onEvent);
  await hang.state.resumed;
  assert.ok(hang.state.stoppedAt !== undefined, "the gpu-node was stopped mid-decode");
  for (const [id, r] of stormy.results) {
    assert.equal(r.error, "", `${id}: ${r.error}`);
    assert.deepEqual(r.completionTokenIds, calm.get(id), `${id}: the tokens of an undisturbed run`);
  }
  assert.equal(stormy.results.size, PROMPTS.length);
  assert.ok(
    log.some((l) => l.includes(`cluster: gpu-node ${gpu} lost (DEADLINE_EXCEEDED`)),
    log.join("\n"),
  );
  assert.ok(
    log.some((l) => l.includes(`cluster: gpu-node ${gpu} back`)),
    log.join("\n"),
  );
});

test("a coordinator paused longer than --node-lost-after and the step deadline declares no node lost and rebuilds no KV cache", async (t) => {
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "step-deadlines-test" });
  t.after(async () => {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  const lostAfterMs = 3000;
  const pauseMs = 2 * lostAfterMs;
  const cluster = await startTestCluster({
    nats: { servers: SERVERS, prefix },
    flags: { coordinator: [...ONE_AT_A_TIME, "--node-lost-after", String(lostAfterMs), "--step-deadline", "1500"] },
  });
  t.after(() => cluster.stop(1000));
  const calm = await calmRun(cluster);
  const log = follow(cluster, "coordinator");
  const pause = stopMidDecode(cluster, "coordinator", t, pauseMs);
  const stormy = await generate(cluster.address, request(), pause.onEvent);
  await pause.state.resumed;
  assert.ok(pause.state.stoppedAt !== undefined, "the coordinator was paused mid-decode");
  for (const [id, r] of stormy.results) {
    assert.equal(r.error, "", `${id}: ${r.error}`);
    assert.deepEqual(r.completionTokenIds, calm.get(id), `${id}: the tokens of an undisturbed run`);
  }
  assert.equal(stormy.results.size, PROMPTS.length);
  assert.ok(
    log.some((l) => /registry: this watcher was not running for \d+ ms/.test(l)),
    `the pause is noticed:\n${log.join("\n")}`,
  );
  const harm = log.filter((l) => /\blost\b|move|DEADLINE|retrying|no answer/.test(l));
  assert.deepEqual(harm, [], "no node lost, no sequence moved, no step re-sent");
});
