/**
 * RunningClock and runningTimeout with an injected clock: a gap between
 * ticks far above the tick period is a stall (the process was paused),
 * not running time, and a running timeout does not expire for it;
 * RunningTime adds up the running gaps only, read by its timer or a caller.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { RunningClock, RunningTime, runningNow, runningTimeout } from "@tessera/core";

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

test("RunningTime: adds the gaps between readings up to stallMs, not a stall; its timer reads it; runningNow is monotonic", async () => {
  let now = 5000;
  const rt = new RunningTime({ periodMs: 100, stallMs: 500, now: () => now });
  assert.equal(rt.now(), 0);
  now += 300;
  assert.equal(rt.now(), 300);
  now += 60_000; // SIGSTOPped for a minute
  assert.equal(rt.now(), 300);
  now += 400;
  assert.equal(rt.now(), 700);
  // 600 ms in steps of 100: one gap above stallMs unless the started timer reads the clock in between.
  rt.start();
  for (let i = 0; i < 6; i++) {
    now += 100;
    await new Promise((r) => setTimeout(r, 150));
  }
  assert.equal(rt.now(), 1300);
  rt.stop();
  const a = runningNow();
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(runningNow() >= a);
  assert.throws(() => new RunningTime({ periodMs: 0 }), /periodMs must be a positive number of ms, got 0/);
});
