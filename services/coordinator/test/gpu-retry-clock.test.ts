/**
 * The gpu-node retry window (engine/executor.ts gpuRetry) counts the
 * coordinator's running time (BatchContext.runningNow), not wall-clock
 * time: with an injected RunningTime on a mocked Date, a coordinator
 * stopped for a minute while its gpu-node fails still re-sends the step,
 * and gives up once the failure has lasted --retry-timeout of running time.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { RunningTime } from "@tessera/core";
import { Code, RpcError } from "@tessera/proto";
import { Membership } from "../src/membership.js";
import { compileCoordinatorOptions } from "../src/options.js";
import { StepExecutor } from "../src/engine/executor.js";
import type { BatchContext, BatchJob } from "../src/engine/index.js";

test("gpuRetry: a pause of the coordinator does not use up --retry-timeout; running time past it fails the step", async (t) => {
  // Date.now() is what a wall-clock window reads: mocked, so a jump of it is the pause.
  t.mock.timers.enable({ apis: ["Date"], now: 1_000_000 });
  const clock = new RunningTime({ stallMs: 500, now: () => Date.now() });
  const address = "127.0.0.1:1";
  const membership = new Membership({ gpu: [address], memory: ["127.0.0.1:2"], storage: [] }, 60_000);
  t.after(() => membership.close());
  const lines: string[] = [];
  const ctx = {
    options: compileCoordinatorOptions({
      gpuNodes: [address],
      memoryNodes: ["127.0.0.1:2"],
      retryTimeoutMs: 1000,
      log: (l: string) => lines.push(l),
    }),
    membership,
    stages: [{ address, range: { start: 0, end: 1 } }],
    signal: new AbortController().signal,
    gpu: {
      address,
      step: () => Promise.reject(new RpcError(Code.UNAVAILABLE, `gpu-node ${address}: connection refused`)),
    },
    runningNow: () => clock.now(),
  } as unknown as BatchContext;
  const executor = new StepExecutor({ ctx, groups: 1, seqs: [], jobId: "j", nonce: "n" } as unknown as BatchJob);

  assert.deepEqual(await executor.execute([], true), { kind: "resend" }, "first failure: retried");
  // The coordinator is stopped for 60 s (SIGSTOP) while the gpu-node fails.
  t.mock.timers.tick(60_000);
  assert.deepEqual(await executor.execute([], true), { kind: "resend" }, "the pause used none of the 1 s window");
  // Running for 1.2 s (read every 100 ms, as RunningTime's timer does).
  for (let i = 0; i < 12; i++) {
    t.mock.timers.tick(100);
    clock.now();
  }
  const out = await executor.execute([], true);
  assert.equal(out.kind, "failed");
  assert.match((out as { message: string }).message, /connection refused/);
  assert.equal(lines.filter((l) => l.includes("retrying in")).length, 2, lines.join("\n"));
});
