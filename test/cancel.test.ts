/**
 * A client that cancels its Generate call stops the job, and every KV cache
 * the job opened is freed on its attention node.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Attention, Code, Coordinator, KvPlacement, RpcError, createClient, type GenerateEvent } from "@tessera/proto";
import { startInProcessCluster } from "@tessera/testing";

test("a cancelled job frees every KV cache it opened", async (t) => {
  const cluster = await startInProcessCluster(t);
  const client = createClient(Coordinator, cluster.address);
  const info = createClient(Attention, cluster.memories[0]!.address);
  t.after(async () => {
    client.close();
    info.close();
  });

  const abort = new AbortController();
  let usedWhileRunning = 0n;
  const stream = client.generate(
    {
      prompts: Array.from({ length: 4 }, (_, i) => ({ id: `p${i}`, prompt: "" })),
      sampling: { temperature: 0, maxTokens: 256 },
      kv: KvPlacement.MEMORY,
    },
    { signal: abort.signal },
  );
  await assert.rejects(
    (async () => {
      for await (const ev of stream as AsyncIterable<GenerateEvent>) {
        if (ev.event.case === "progress" && ev.event.value.tokensGenerated > 0n && !abort.signal.aborted) {
          usedWhileRunning = (await info.info({})).usedBytes;
          abort.abort();
        }
      }
    })(),
    (err: unknown) => RpcError.from(err).code === Code.CANCELLED,
  );
  assert.ok(usedWhileRunning > 0n, "no KV cache was held while the job ran");
  // The coordinator notices the cancel at its next step and frees the caches.
  let after = await info.info({});
  for (let i = 0; i < 50 && after.usedBytes !== 0n; i++) {
    await sleep(100);
    after = await info.info({});
  }
  assert.equal(after.usedBytes, 0n);
  assert.equal(after.sequences, 0);
});
