/**
 * Step deadlines without a gpu-node process (engine/step-deadline.ts): a
 * fake pipeline whose stage address is a real gRPC health server
 * (answering SERVING) or a port nothing listens on. A step past its
 * deadline on a stage that does not answer is abandoned and the stage
 * marked lost; one that answers health checks is waited for (not sent
 * twice) up to retryTimeoutMs; the p99 sets the deadline once 20 steps
 * were answered.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { startGrpcServer } from "@tessera/rpc";
import { ROLES } from "@tessera/core";
import type { ForwardResponse } from "@tessera/proto";
import { freePort } from "@tessera/testing";
import { Membership } from "../src/membership.js";
import { compileCoordinatorOptions } from "../src/options.js";
import { StepDeadlines } from "../src/engine/step-deadline.js";
import type { BatchContext } from "../src/engine/index.js";

/**
 * A pipeline of one stage at `address` whose step answers after `answerMs`
 * (never when undefined); `memory` is the job's memory-node.
 */
function fakeContext(
  address: string,
  answerMs: number | undefined,
  extra: { retryTimeoutMs?: number } = {},
  memory = "127.0.0.1:2",
) {
  const lines: string[] = [];
  const signals: AbortSignal[] = [];
  const membership = new Membership({ gpu: [address], memory: [memory], storage: [] }, 60_000);
  const ctx = {
    options: compileCoordinatorOptions({
      gpuNodes: [address],
      memoryNodes: [memory],
      stepDeadlineMs: 200,
      log: (l: string) => lines.push(l),
      ...extra,
    }),
    membership,
    stages: [{ address, range: { start: 0, end: 1 } }],
    signal: new AbortController().signal,
    gpu: {
      address,
      step: (_req: unknown, signal: AbortSignal) => {
        signals.push(signal);
        return new Promise<ForwardResponse>((resolve, reject) => {
          signal.addEventListener("abort", () => reject(new Error("step cancelled")));
          if (answerMs !== undefined) setTimeout(() => resolve({ stepId: 1n } as ForwardResponse), answerMs);
        });
      },
    },
  } as unknown as BatchContext;
  return { ctx, lines, signals, membership };
}

async function healthServer(t: TestContext): Promise<string> {
  const server = await startGrpcServer("127.0.0.1", 0, [ROLES.gpu.service], () => {});
  t.after(() => server.shutdown(100));
  return server.address;
}

test("a step past its deadline whose stage answers no health check: abandoned, the stage marked lost", async (t) => {
  const address = `127.0.0.1:${await freePort()}`;
  const { ctx, signals, membership } = fakeContext(address, undefined);
  t.after(() => membership.close());
  const sent = await new StepDeadlines(ctx).send({ stepId: 7n }, true);
  assert.ok("missed" in sent);
  assert.deepEqual(sent.marked, [address]);
  assert.match(sent.missed, new RegExp(`^DEADLINE_EXCEEDED: gpu-node ${address} did not answer step 7 within 200 ms`));
  assert.equal(membership.isDown(address), true);
  assert.equal(signals.length, 1);
  assert.equal(signals[0]!.aborted, true, "the step is abandoned");
});

test("a slow step whose stage answers health checks is waited for, a deadline at a time, and sent once", async (t) => {
  const address = await healthServer(t);
  const { ctx, lines, signals, membership } = fakeContext(address, 700);
  t.after(() => membership.close());
  const sent = await new StepDeadlines(ctx).send({ stepId: 3n }, true);
  assert.ok(!("missed" in sent), "answered");
  assert.equal(signals.length, 1);
  assert.equal(membership.isDown(address), false);
  assert.ok(
    lines.some((l) => /step 3: no answer from gpu-node .* within 200 ms; the gpu-nodes answer health checks/.test(l)),
  );
});

test("a step stuck on a stage that answers health checks fails after retryTimeoutMs, nobody marked lost", async (t) => {
  const address = await healthServer(t);
  const { ctx, membership } = fakeContext(address, undefined, { retryTimeoutMs: 500 });
  t.after(() => membership.close());
  const sent = await new StepDeadlines(ctx).send({ stepId: 4n }, false);
  assert.ok("missed" in sent);
  assert.deepEqual(sent.marked, []);
  assert.match(sent.missed, /^DEADLINE_EXCEEDED: gpu-node .* did not answer step 4 within (6|8)00 ms$/);
  assert.equal(membership.isDown(address), false);
});

test("a step waiting on an attention node that answers no health check: the node is marked lost, the step waited for past retryTimeoutMs", async (t) => {
  const address = await healthServer(t);
  const memory = `127.0.0.1:${await freePort()}`;
  const { ctx, lines, signals, membership } = fakeContext(address, 900, { retryTimeoutMs: 300 }, memory);
  t.after(() => membership.close());
  const req = { stepId: 5n, sequences: [{ seqId: "s", attentionAddress: memory }] };
  const sent = await new StepDeadlines(ctx).send(req, true);
  assert.ok(!("missed" in sent), "answered: the gpu-node's own attention timeout ends such a step");
  assert.equal(signals.length, 1);
  assert.equal(membership.isDown(memory), true, "the attention node is marked lost (its sequences move)");
  assert.equal(membership.isDown(address), false);
  assert.ok(lines.some((l) => l.includes(`attention node(s) ${memory} down or answering no health check`)));
});

test("the deadline is max(stepDeadlineMs, factor × p99), the p99 counting from 20 answered steps of the kind", () => {
  const { ctx, membership } = fakeContext("127.0.0.1:1", undefined);
  membership.close();
  const d = new StepDeadlines(ctx);
  for (let i = 0; i < 19; i++) d.record(true, 0.5);
  assert.equal(d.deadlineMs(true), 200, "19 steps: the floor");
  d.record(true, 0.5);
  const ms = d.deadlineMs(true);
  assert.ok(ms >= 5000 && ms <= 5100, `10 × p99 of 500 ms steps, got ${ms}`);
  assert.equal(d.deadlineMs(false), 200, "prefill steps are counted apart");
});
