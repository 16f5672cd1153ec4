/** The coordinator's shared running batch: places go to higher-priority, then older, jobs' waiting sequences. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BatchSlots, priorityRank } from "../src/batch-slots.js";

test("free places go to the waiting sequences of jobs ahead first", () => {
  const slots = new BatchSlots(4);
  const low = slots.join("low");
  low.update(0, 10);
  assert.equal(low.room(), 4);
  low.update(4, 6);
  assert.equal(low.room(), 0);
  const high = slots.join("high");
  high.update(0, 2);
  // Full: nobody gets a place until one frees.
  assert.equal(high.room(), 0);
  low.update(3, 6);
  // One free place: the high job's, not the low job's.
  assert.equal(high.room(), 1);
  assert.equal(low.room(), 0);
  high.update(1, 1);
  low.update(2, 6);
  assert.equal(high.room(), 1);
  assert.equal(low.room(), 0, "the high job still waits for one");
  high.update(2, 0);
  low.update(1, 6);
  assert.equal(low.room(), 1);
  high.leave();
  low.update(1, 6);
  assert.equal(low.room(), 3);
  assert.equal(slots.running, 1);
  low.leave();
  assert.equal(slots.running, 0);
});

test("within a priority the older job goes first; a job waiting for KV capacity claims nothing", () => {
  const slots = new BatchSlots(2);
  const first = slots.join("normal");
  const second = slots.join("normal");
  first.update(1, 3);
  second.update(0, 3);
  assert.equal(first.room(), 1);
  assert.equal(second.room(), 0);
  first.update(1, 0); // its waiting sequences are blocked on KV capacity
  assert.equal(second.room(), 1);
  assert.equal(slots.join("bogus").room(), 0, "an unknown priority counts as normal, behind both");
});

test("priority ranks", () => {
  assert.deepEqual(["high", "normal", "low"].map(priorityRank), [0, 1, 2]);
  for (const p of ["", "HIGH", "toString", "constructor"]) assert.equal(priorityRank(p), undefined, p);
});
