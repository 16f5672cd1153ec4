/**
 * The keyed lock of SubmitJob's quota check (issue 13): one key's tasks run
 * one at a time in call order; another key's task runs while the first key
 * is held, and a failed task releases its key.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createKeyedLock } from "../src/api/tenant-lock.js";

test("createKeyedLock: one key's tasks in order, one at a time; another key does not wait; a rejection releases the key", async () => {
  const lock = createKeyedLock();
  const order: string[] = [];
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const a1 = lock("acme", async () => {
    order.push("a1 start");
    await held;
    order.push("a1 end");
  });
  const a2 = lock("acme", async () => void order.push("a2"));
  // acme is held until release(): globex's task still runs to its end.
  await lock("globex", async () => void order.push("g"));
  assert.deepEqual(order, ["a1 start", "g"]);
  release();
  await Promise.all([a1, a2]);
  assert.deepEqual(order, ["a1 start", "g", "a1 end", "a2"]);
  await assert.rejects(
    lock("acme", () => Promise.reject(new Error("boom"))),
    /boom/,
  );
  assert.equal(await lock("acme", async () => 7), 7);
});
