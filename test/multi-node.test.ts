/**
 * Issue 3, "more than one of each node": 2 gpu-nodes (pipeline stages, each
 * a layer range) x 2 memory-nodes x 1 storage-node give the same tokens as
 * 1 x 1 x 1, and the KV caches of one batch spread over the attention nodes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Code, KvPlacement, RpcError } from "@tessera/proto";
import { parsePromptsJsonl } from "@tessera/core";
import { createGpuNode } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { createStorageNode } from "@tessera/storage-node";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate, tempDir } from "@tessera/testing";

test("2 gpu-nodes x 2 memory-nodes x 1 storage-node give the tokens of 1 x 1 x 1", async (t) => {
  const dir = await tempDir();
  // f32 on the wire: with f16, the hidden states rounded between the two
  // stages could flip a greedy choice at a near-tie of the two best logits.
  const gpus = [createGpuNode({ port: 0, wireDtype: "f32" }), createGpuNode({ port: 0, wireDtype: "f32" })];
  // Each memory-node holds about 7 of the 12 memory sequences (stories260K:
  // 1280 bytes of KV per position, prompt + 48 tokens under 64 positions),
  // so the planner needs both (with room for all, a tiny model's plan is
  // bound by round trips, and one node is as fast as two).
  const capacityBytes = 7 * 64 * 1280;
  const memories = [createMemoryNode({ port: 0, capacityBytes }), createMemoryNode({ port: 0, capacityBytes })];
  const storage = createStorageNode({ port: 0, dataDir: dir.path });
  await Promise.all([...gpus, ...memories, storage].map((n) => n.start()));
  const coordinator = (gpuNodes: string[], memoryNodes: string[]) =>
    createCoordinator({
      gpuNodes,
      memoryNodes,
      storageNodes: [storage.address],
      modelPath: bundled.model,
      tokenizerPath: bundled.tokenizer,
      connectTimeoutMs: 1000,
      retryTimeoutMs: 1000,
      log: () => {},
    });
  const single = coordinator([gpus[0]!.address], [memories[0]!.address]);
  const split = coordinator(
    gpus.map((g) => g.address),
    memories.map((m) => m.address),
  );
  await Promise.all([single.start(), split.start()]);
  t.after(async () => {
    await Promise.all([single.close(), split.close()]);
    await Promise.all([...gpus, ...memories, storage].map((n) => n.close()));
    await dir.remove();
  });

  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8")).map((p, i) => ({
    id: p.id,
    prompt: p.prompt,
    kv: i % 4 === 3 ? KvPlacement.STORAGE : KvPlacement.MEMORY,
  }));
  const request = { prompts, sampling: { temperature: 0, maxTokens: 48 } };
  const one = await generate(single.address, request);
  const many = await generate(split.address, request);
  assert.equal(many.summary?.errors, 0);
  for (const p of prompts) {
    assert.deepEqual(many.results.get(p.id)!.completionTokenIds, one.results.get(p.id)!.completionTokenIds, p.id);
  }
  const kvNodes = new Set([...many.results.values()].map((r) => r.kvNode));
  assert.deepEqual(
    [...kvNodes].sort(),
    [...memories.map((m) => `memory@${m.address}`), `storage@${storage.address}`].sort(),
  );

  // The second stage really is in the path: without it the job cannot run.
  await gpus[1]!.close();
  const out = await generate(split.address, { prompts: [prompts[0]!], sampling: { maxTokens: 4 } }).catch(
    (err: unknown) => err,
  );
  if (out instanceof Error) {
    assert.equal(RpcError.from(out).code, Code.UNAVAILABLE);
    assert.match(out.message, new RegExp(gpus[1]!.address));
  } else {
    const r = (out as Awaited<ReturnType<typeof generate>>).results.get(prompts[0]!.id)!;
    assert.equal(r.finishReason, "error");
    assert.match(r.error, new RegExp(gpus[1]!.address));
  }
});
