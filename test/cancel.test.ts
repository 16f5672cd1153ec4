/**
 * A client that cancels its Generate call stops the job, and every KV cache
 * the job opened is freed on its attention node.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import {
  Attention,
  Code,
  Coordinator,
  GenerateRequestSchema,
  KvPlacement,
  RpcError,
  createClient,
  type GenerateEvent,
} from "@tessera/proto";
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

test("an in-process job aborted mid-batch emits no error Result for the prompts it never ran", async (t) => {
  const cluster = await startInProcessCluster(t, { coordinator: { maxBatchSequences: 4 } });
  const abort = new AbortController();
  const afterAbort: string[] = [];
  const request = create(GenerateRequestSchema, {
    prompts: Array.from({ length: 24 }, (_, i) => ({ id: `p${i}`, prompt: "Once upon a time", maxTokens: 2 + i })),
    sampling: { temperature: 0 },
    kv: KvPlacement.MEMORY,
  });
  await assert.rejects(
    cluster.coordinator.generate(request, {
      signal: abort.signal,
      emit(ev) {
        if (ev.event?.case !== "result") return;
        // The first result aborts the job (as the job worker does when it is stopped).
        if (abort.signal.aborted) {
          if (ev.event.value.finishReason === "error") afterAbort.push(`${ev.event.value.id}: ${ev.event.value.error}`);
        } else abort.abort();
      },
    }),
    (err: unknown) => RpcError.from(err).code === Code.CANCELLED,
  );
  // The engine stops admitting: no sequence is opened only to fail with "Cancelled".
  assert.deepEqual(afterAbort, []);
});
