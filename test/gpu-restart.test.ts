/**
 * Issue 5, "a gpu-node dies: the job waits for a replacement": the
 * gpu-node process is killed (SIGKILL) mid-decode and started again on the
 * same port; the coordinator retries the step until it answers, loads the
 * layer range again (the new process holds no model) and the job finishes
 * with the tokens of an undisturbed run — the KV caches were on the
 * attention nodes all along.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvPlacement } from "@tessera/proto";
import { generate } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";

const request = (id: string, kv: KvPlacement) => ({
  prompts: [{ id, prompt: "" }],
  // BOS only, greedy: the reference text, 256 tokens without a stop.
  sampling: { temperature: 0, maxTokens: 256 },
  kv,
});

for (const [name, kv] of [
  ["memory", KvPlacement.MEMORY],
  ["storage", KvPlacement.STORAGE],
] as const) {
  test(`a gpu-node killed mid-decode and restarted: the job waits, reloads it and keeps its tokens (KV on ${name})`, async (t) => {
    const cluster = await startTestCluster();
    let restarted: Promise<void> | undefined;
    t.after(async () => {
      await restarted?.catch(() => undefined);
      await cluster.stop();
    });
    const calm = (await generate(cluster.address, request("calm", kv))).results.get("calm")!;
    assert.equal(calm.finishReason, "length", "the test needs a long decode; the model stopped early");
    let killedAt: bigint | undefined;
    const stormy = await generate(cluster.address, request("stormy", kv), async (ev) => {
      if (ev.event.case === "progress" && killedAt === undefined && ev.event.value.tokensGenerated > 0n) {
        killedAt = ev.event.value.tokensGenerated;
        await cluster.kill("gpu");
        restarted = new Promise((r) => setTimeout(r, 500)).then(() => cluster.restart("gpu"));
      }
    });
    await restarted;
    const r = stormy.results.get("stormy")!;
    assert.ok(killedAt !== undefined && killedAt < 256n, `killed at ${killedAt}`);
    assert.equal(r.error, "");
    assert.equal(r.finishReason, "length");
    assert.deepEqual(r.completionTokenIds, calm.completionTokenIds);
  });
}
