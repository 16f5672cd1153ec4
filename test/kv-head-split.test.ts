/**
 * Issue 3, "more than one of each node" by KV-head group (HeadInfer, Luo et
 * al. 2025): with kvHeadGroups 2, each sequence's 4 KV heads (stories260K:
 * 8 query heads, 4 KV heads) are split into heads [0, 2) and [2, 4) on
 * distinct attention nodes, so no node holds a whole sequence's cache, and
 * the tokens are those of the unsplit 1 x 1 x 1 cluster.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Attention, GpuNode, KvPlacement, createClient, type ForwardResponse } from "@tessera/proto";
import { kvBytesPerPosition, parsePromptsJsonl, tensorF32 } from "@tessera/core";
import { ReferenceModel, loadCheckpoint, loadTokenizer } from "@tessera/model";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate, startInProcessCluster } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";

const MAX_TOKENS = 48;

test("a gpu-node step with sequences split by KV-head group over two memory-nodes gives the reference logits; each node holds half the KV", async (t) => {
  const { gpus, memories } = await startInProcessCluster(t, { memoryNodes: 2, gpu: { wireDtype: "f32" } });
  const checkpoint = await loadCheckpoint(bundled.model);
  const shape = checkpoint.shape;
  assert.deepEqual([shape.nHeads, shape.nKvHeads], [8, 4]);
  const tokenizer = await loadTokenizer(bundled.tokenizer, shape.vocabSize);
  const reference = new ReferenceModel(checkpoint);
  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"));
  const promptIds = prompts.map((p) => tokenizer.encode(p.prompt, { bos: true, eos: false }));
  const [m0, m1] = memories.map((m) => createClient(Attention, m.address)) as [
    ReturnType<typeof createClient<typeof Attention>>,
    ReturnType<typeof createClient<typeof Attention>>,
  ];
  const gpu = createClient(GpuNode, gpus[0]!.address);
  t.after(() => {
    for (const c of [m0, m1, gpu]) c.close();
  });
  await gpu.load({ modelPath: bundled.model, layerStart: 0, layerEnd: shape.nLayers, embed: true, head: true });

  // Sequence i: heads [0, 2) on node i % 2, heads [2, 4) on the other, so
  // each node gets two AttendRequests per layer (one per head range), each
  // over rows that are not adjacent in the batch.
  const nodes = [memories[0]!.address, memories[1]!.address];
  const clients = [m0, m1];
  const groups = [
    [0, 2],
    [2, 4],
  ] as const;
  const shardsOf = (i: number) =>
    groups.map(([start, end], g) => ({
      address: nodes[(i + g) % 2]!,
      client: clients[(i + g) % 2]!,
      seqId: `s${i}#h${start}-${end}`,
      kvHeadStart: start,
      kvHeadEnd: end,
    }));
  const maxPositions = (i: number) => promptIds[i]!.length + 1;
  await Promise.all(
    promptIds.flatMap((_, i) =>
      shardsOf(i).map((sh) =>
        sh.client.openSequence({
          seqId: sh.seqId,
          layout: { nLayers: shape.nLayers, nHeads: 4, nKvHeads: 2, headDim: shape.headDim },
          maxPositions: maxPositions(i),
        }),
      ),
    ),
  );
  // Each node holds one half of every sequence: half the bytes of the whole caches.
  const whole = promptIds.reduce((a, _, i) => a + maxPositions(i) * kvBytesPerPosition(shape), 0);
  for (const c of clients) {
    const info = await c.info({});
    assert.equal(info.sequences, 16);
    assert.equal(Number(info.usedBytes), whole / 2);
  }

  const stream = gpu.forward();
  const res = await new Promise<ForwardResponse>((resolve, reject) => {
    stream.once("data", resolve);
    stream.once("error", reject);
    stream.write({
      stepId: 1n,
      sequences: promptIds.map((ids, i) => ({
        seqId: `s${i}`,
        startPos: 0,
        nTokens: ids.length,
        shards: shardsOf(i).map(({ address, seqId, kvHeadStart, kvHeadEnd }) => ({
          address,
          seqId,
          kvHeadStart,
          kvHeadEnd,
        })),
      })),
      tokens: promptIds.flat(),
    });
  });
  stream.end();
  assert.equal(res.error, undefined, res.error?.message);
  const logits = tensorF32(res.logits);
  let maxDiff = 0;
  promptIds.forEach((ids, i) => {
    const state = reference.createState();
    let ref!: Float32Array;
    ids.forEach((tok, pos) => (ref = reference.forward(state, tok, pos)));
    for (let v = 0; v < shape.vocabSize; v++) {
      maxDiff = Math.max(maxDiff, Math.abs(logits[i * shape.vocabSize + v]! - ref[v]!));
    }
  });
  assert.ok(maxDiff <= 1e-4, `max |logit difference| ${maxDiff} > 1e-4`);
});

test("2 gpu-nodes x 2 memory-nodes x 1 storage-node with kvHeadGroups 2 give the tokens of 1 x 1 x 1, with no memory-node able to hold a whole sequence", async (t) => {
  const checkpoint = await loadCheckpoint(bundled.model);
  const tokenizer = await loadTokenizer(bundled.tokenizer, checkpoint.shape.vocabSize);
  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8")).map((p, i) => ({
    id: p.id,
    prompt: p.prompt,
    kv: i % 4 === 3 ? KvPlacement.STORAGE : KvPlacement.MEMORY,
  }));
  // Capacity of each memory-node: one byte short of the whole cache of the
  // longest memory sequence, so it runs only split (half of it fits twice).
  const longest = Math.max(
    ...prompts
      .filter((p) => p.kv === KvPlacement.MEMORY)
      .map((p) => tokenizer.encode(p.prompt, { bos: true, eos: false }).length + MAX_TOKENS - 1),
  );
  const capacity = longest * kvBytesPerPosition(checkpoint.shape) - 1;
  const request = { prompts, sampling: { temperature: 0, maxTokens: MAX_TOKENS } };
  // f32 on the wire: the pipeline split adds a hidden-state hop that f16 would round.
  const single = await startInProcessCluster(t, { storageNodes: 1, gpu: { wireDtype: "f32" } });
  const split = await startInProcessCluster(t, {
    gpuNodes: 2,
    memoryNodes: 2,
    storageNodes: 1,
    memoryCapacityBytes: capacity,
    gpu: { wireDtype: "f32" },
    coordinator: { kvHeadGroups: 2 },
  });

  const one = await generate(single.address, request);
  const many = await generate(split.address, request);
  assert.equal(one.summary?.errors, 0);
  assert.equal(many.summary?.errors, 0, [...many.results.values()].map((r) => r.error).join("; "));
  for (const p of prompts) {
    const r = many.results.get(p.id)!;
    assert.deepEqual(r.completionTokenIds, one.results.get(p.id)!.completionTokenIds, p.id);
    // Both groups of a memory sequence on distinct memory-nodes; both of a
    // storage sequence on the one storage-node.
    const [m0, m1] = split.memories.map((m) => `memory@${m.address}`);
    const s0 = `storage@${split.storages[0]!.address}`;
    const where = r.kvNode.split(",");
    if (p.kv === KvPlacement.STORAGE) assert.deepEqual(where, [s0, s0], p.id);
    else assert.deepEqual([...where].sort(), [m0!, m1!].sort(), p.id);
  }
  // Every KV cache was released.
  for (const m of split.memories) {
    const info = await createClient(Attention, m.address).info({});
    assert.deepEqual([info.sequences, info.usedBytes], [0, 0n]);
  }

  // The control: unsplit, the longest memory sequence fits on no memory-node.
  const unsplit = createCoordinator({
    ...split.coordinator.options,
    port: 0,
    kvHeadGroups: 1,
  });
  await unsplit.start();
  t.after(() => unsplit.close());
  const longestPrompt = prompts.find(
    (p) =>
      p.kv === KvPlacement.MEMORY &&
      tokenizer.encode(p.prompt, { bos: true, eos: false }).length + MAX_TOKENS - 1 === longest,
  )!;
  const control = await generate(unsplit.address, { ...request, prompts: [longestPrompt] });
  const r = control.results.get(longestPrompt.id)!;
  assert.equal(r.finishReason, "error");
  assert.match(r.error, /cannot open sequence .*: needs \d+ bytes, \d+ available/);
});

test("kvHeadGroups that does not divide the model's n_kv_heads fails the job INVALID_ARGUMENT", async (t) => {
  const { address } = await startInProcessCluster(t, { coordinator: { kvHeadGroups: 3 } });
  await assert.rejects(
    generate(address, { prompts: [{ id: "a", prompt: "Once" }], sampling: { maxTokens: 2 } }),
    /INVALID_ARGUMENT: kvHeadGroups 3 does not divide the model's n_kv_heads 4/,
  );
});

test("a memory-node holding one KV-head group going down: whole sequences move to the node left, with undisturbed tokens", async (t) => {
  const cluster = await startInProcessCluster(t, {
    memoryNodes: 2,
    coordinator: { kvHeadGroups: 2, retryTimeoutMs: 5000, failoverMs: 500, connectTimeoutMs: 1000 },
  });
  const [alive, doomed] = cluster.memories as [(typeof cluster.memories)[0], (typeof cluster.memories)[0]];
  const request = {
    prompts: ["Once upon a time", "Sam found a shiny stone"].map((prompt, i) => ({
      id: `p${i}`,
      prompt,
      kv: KvPlacement.MEMORY,
    })),
    sampling: { temperature: 0, maxTokens: 400 },
  };
  const calm = await generate(cluster.address, request);
  let closing: Promise<void> | undefined;
  const outcome = await generate(cluster.address, request, (e) => {
    // Mid-decode: every sequence has one group on each node.
    if (e.event.case === "progress" && e.event.value.tokensGenerated > 0n) closing ??= doomed.close();
  });
  await closing;
  assert.ok(closing, "the job ended before a progress event");
  for (const r of outcome.results.values()) {
    assert.equal(r.error, "", r.id);
    assert.deepEqual(r.completionTokenIds, calm.results.get(r.id)!.completionTokenIds, r.id);
    // Both groups now on the node left.
    assert.equal(r.kvNode, `memory@${alive.address},memory@${alive.address}`, r.id);
  }
  assert.ok((outcome.summary?.plan?.movedSequences ?? 0) > 0, "the last plan moved sequences");
  // Every group was closed with its sequence.
  const info = await createClient(Attention, alive.address).info({});
  assert.deepEqual([info.sequences, info.usedBytes], [0, 0n]);
});

test("a storage-node holding both KV-head groups of a sequence, killed mid-decode and restarted: both are re-opened and the tokens are unchanged", async (t) => {
  const cluster = await startTestCluster({ flags: { coordinator: ["--kv-head-groups", "2"] } });
  let restarted: Promise<void> | undefined;
  t.after(async () => {
    await restarted?.catch(() => undefined);
    await cluster.stop();
  });
  const request = (id: string) => ({
    prompts: [{ id, prompt: "" }],
    sampling: { temperature: 0, maxTokens: 256 },
    kv: KvPlacement.STORAGE,
  });
  const calm = (await generate(cluster.address, request("calm"))).results.get("calm")!;
  assert.equal(calm.finishReason, "length", "the test needs a long decode; the model stopped early");
  assert.equal(calm.kvNode.split(",").length, 2);
  let killedAt: bigint | undefined;
  const disturbed = await generate(cluster.address, request("stormy"), async (ev) => {
    if (ev.event.case === "progress" && killedAt === undefined && ev.event.value.tokensGenerated > 0n) {
      killedAt = ev.event.value.tokensGenerated;
      await cluster.kill("storage");
      restarted = new Promise((r) => setTimeout(r, 300)).then(() => cluster.restart("storage"));
    }
  });
  await restarted;
  const stormy = disturbed.results.get("stormy")!;
  assert.ok(killedAt !== undefined && killedAt < 256n);
  assert.equal(stormy.error, "");
  assert.deepEqual(stormy.completionTokenIds, calm.completionTokenIds);
});
