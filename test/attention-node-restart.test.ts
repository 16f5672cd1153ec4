/**
 * A graceful restart of an attention node: the storage-node process gets
 * SIGTERM in the middle of a decode (it drains: finishes the Attend request
 * in flight, ends its Attend streams with OK and exits), is started again on
 * the same port and data directory, and the sequence finishes with the same
 * tokens as an undisturbed run. See storage-restart.test.ts for SIGKILL.
 *
 * The node must exit while the sequence is still decoding (asserted): a
 * drain that leaves the Attend streams open waits out its whole grace
 * period, longer than this decode, and then cancels them.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { KvPlacement } from "@tessera/proto";
import { generate } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";

const request = (id: string) => ({
  prompts: [{ id, prompt: "" }],
  // BOS only, greedy: the reference text, 256 tokens without a stop.
  sampling: { temperature: 0, maxTokens: 256 },
  kv: KvPlacement.STORAGE,
});

test("a storage-node restarted with SIGTERM mid-decode: the sequence finishes with the same tokens", async (t) => {
  const cluster = await startTestCluster();
  let restarted: Promise<void> | undefined;
  // A restart still under way when an assertion fails must land before the cluster stops, or its process leaks.
  t.after(async () => {
    await restarted?.catch(() => undefined);
    await cluster.stop();
  });

  const undisturbed = await generate(cluster.address, request("calm"));
  const calm = undisturbed.results.get("calm")!;
  assert.equal(calm.finishReason, "length", "the test needs a long decode; the model stopped early");

  let stoppedAt: bigint | undefined;
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const disturbed = await generate(cluster.address, request("stormy"), async (ev) => {
    if (ev.event.case === "progress" && stoppedAt === undefined && ev.event.value.tokensGenerated > 0n) {
      stoppedAt = ev.event.value.tokensGenerated;
      const child = cluster.node("storage").child;
      const exited = once(child, "exit") as Promise<[number | null, NodeJS.Signals | null]>;
      child.kill("SIGTERM");
      // Restart once it has exited, while the coordinator keeps retrying the step.
      restarted = exited.then(([code, signal]) => {
        exit = { code, signal };
        return cluster.restart("storage");
      });
    }
    if (ev.event.case === "result") {
      assert.ok(stoppedAt !== undefined, "the decode finished before the storage-node was stopped");
      // The node must have left while the sequence was still decoding: a
      // drain that waits out its grace period (5 s, longer than this decode)
      // for the Attend streams to end would still be serving here.
      assert.ok(
        exit !== undefined,
        "the decode finished before the storage-node exited: its drain did not end the Attend streams",
      );
    }
  });
  await restarted;
  // A drained node exits by itself (code 0), not by a second signal (130).
  assert.deepEqual(exit, { code: 0, signal: null });
  const stormy = disturbed.results.get("stormy")!;
  assert.ok(stoppedAt! < 256n);
  assert.equal(stormy.error, "");
  assert.equal(stormy.finishReason, "length");
  assert.deepEqual(stormy.completionTokenIds, calm.completionTokenIds);
});
