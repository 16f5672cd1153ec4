/**
 * RunningClock and runningTimeout with an injected clock: a gap between
 * ticks far above the tick period is a stall (the process was paused),
 * not running time, and a running timeout does not expire for it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { RunningClock, runningTimeout } from "@tessera/core";

test("RunningClock: gaps up to stallMs are running time, a longer one is a stall", () => {
  let now = 1000;
  const clock = new RunningClock(500, () => now);
  now += 250;
  assert.deepEqual(clock.tick(), { runningMs: 250, stalledMs: 0 });
  now += 500;
  assert.deepEqual(clock.tick(), { runningMs: 500, stalledMs: 0 });
  now += 20_000;
  assert.deepEqual(clock.tick(), { runningMs: 0, stalledMs: 20_000 });
  now += 100;
  assert.deepEqual(clock.tick(), { runningMs: 100, stalledMs: 0 });
  assert.throws(() => new RunningClock(0), /stallMs must be a positive number of ms, got 0/);
});

test("runningTimeout: a pause does not count; it expires after its running time; a cancelled one never fires", async () => {
  let jump = 0;
  const now = () => performance.now() + jump;
  let firedAt: number | undefined;
  const start = performance.now();
  runningTimeout(400, () => (firedAt = performance.now()), { sliceMs: 50, lateMs: 100, now });
  let cancelledFired = false;
  const cancel = runningTimeout(100, () => (cancelledFired = true), { sliceMs: 50, now });
  cancel();
  await new Promise((r) => setTimeout(r, 100));
  // Paused for 20 s: a timer by the clock would expire at its next tick.
  jump += 20_000;
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(firedAt, undefined, "not expired by the pause");
  for (let i = 0; i < 200 && firedAt === undefined; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(firedAt !== undefined && firedAt - start >= 400, `expired after its 400 ms of running time`);
  assert.equal(cancelledFired, false);
  assert.throws(() => runningTimeout(0, () => {}), /ms must be a positive number, got 0/);
});
