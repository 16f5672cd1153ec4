/**
 * Done-when #3 of issue 2: the storage-node process is killed (SIGKILL, no
 * drain) in the middle of a decode and started again on the same port and
 * data directory; the sequence finishes with the same tokens as an
 * undisturbed run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvPlacement } from "@tessera/proto";
import { generate } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";

const request = (id: string) => ({
  prompts: [{ id, prompt: "" }],
  // BOS only, greedy: the reference text, 256 tokens without a stop.
  sampling: { temperature: 0, maxTokens: 256 },
  kv: KvPlacement.STORAGE,
});

test("a storage-node restarted mid-decode: the sequence finishes with the same tokens", async (t) => {
  const cluster = await startTestCluster();
  t.after(() => cluster.stop());

  const undisturbed = await generate(cluster.address, request("calm"));
  const calm = undisturbed.results.get("calm")!;
  assert.equal(calm.finishReason, "length", "the test needs a long decode; the model stopped early");

  let killedAt: bigint | undefined;
  let restarted: Promise<void> | undefined;
  const disturbed = await generate(cluster.address, request("stormy"), async (ev) => {
    if (ev.event.case === "progress" && killedAt === undefined && ev.event.value.tokensGenerated > 0n) {
      killedAt = ev.event.value.tokensGenerated;
      await cluster.kill("storage");
      // Restart in the background while the coordinator keeps retrying the step.
      restarted = new Promise((r) => setTimeout(r, 300)).then(() => cluster.restart("storage"));
    }
    if (ev.event.case === "result")
      assert.ok(killedAt !== undefined, "the decode finished before the storage-node was killed");
  });
  await restarted;
  const stormy = disturbed.results.get("stormy")!;
  assert.ok(killedAt! < 256n);
  assert.equal(stormy.error, "");
  assert.equal(stormy.finishReason, "length");
  assert.deepEqual(stormy.completionTokenIds, calm.completionTokenIds);
});
