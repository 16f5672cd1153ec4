/**
 * Done-when #2 of issue 2: every prompt of ../shared/prompts/stories.jsonl,
 * run as one batch of 16 through real gpu-, memory- and storage-nodes over
 * gRPC, gives token for token what the single-process reference forward
 * pass (plain TypeScript loops, packages/core/src/reference-model.ts) gives,
 * and the logits of the first (prefill) step agree to 1e-4.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Attention, GpuNode, KvPlacement, createClient, type ForwardResponse } from "@tessera/proto";
import {
  ReferenceModel,
  loadCheckpoint,
  loadTokenizer,
  parsePromptsJsonl,
  tensorF32,
  type Tokenizer,
} from "@tessera/core";
import { bundled, generate, startInProcessCluster } from "@tessera/testing";

const MAX_TOKENS = 64;

async function setup(t: import("node:test").TestContext) {
  const { gpus, memories, storages, coordinator } = await startInProcessCluster(t, { storageNodes: 1 });
  return { gpu: gpus[0]!, memory: memories[0]!, storage: storages[0]!, coordinator };
}

/** Greedy generation with the reference model, as run.c: stop at BOS/EOS or after maxTokens. */
function referenceGreedy(
  model: ReferenceModel,
  tokenizer: Tokenizer,
  promptIds: number[],
  maxTokens: number,
): number[] {
  const state = model.createState();
  const out: number[] = [];
  let logits!: Float32Array;
  promptIds.forEach((tok, pos) => (logits = model.forward(state, tok, pos)));
  let pos = promptIds.length;
  for (;;) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    if (best === tokenizer.bos || best === tokenizer.eos) break;
    out.push(best);
    if (out.length >= maxTokens) break;
    logits = model.forward(state, best, pos++);
  }
  return out;
}

test("a batch of 16 prompts through the cluster gives the reference model's tokens and first-step logits", async (t) => {
  const { gpu, memory, storage, coordinator } = await setup(t);
  const checkpoint = await loadCheckpoint(bundled.model);
  const tokenizer = await loadTokenizer(bundled.tokenizer, checkpoint.shape.vocabSize);
  const reference = new ReferenceModel(checkpoint);
  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"));
  assert.equal(prompts.length, 16);
  const promptIds = prompts.map((p) => tokenizer.encode(p.prompt, { bos: true, eos: false }));

  await t.test("first-step logits match to 1e-4", async () => {
    const gpuClient = createClient(GpuNode, gpu.address);
    const attention = {
      memory: createClient(Attention, memory.address),
      storage: createClient(Attention, storage.address),
    };
    try {
      await gpuClient.load({
        modelPath: bundled.model,
        layerStart: 0,
        layerEnd: checkpoint.shape.nLayers,
        embed: true,
        head: true,
      });
      const layout = {
        nLayers: checkpoint.shape.nLayers,
        nHeads: checkpoint.shape.nHeads,
        nKvHeads: checkpoint.shape.nKvHeads,
        headDim: checkpoint.shape.headDim,
      };
      // Half the sequences on each attention node, so one step spans both.
      const nodeOf = (i: number) => (i % 2 === 0 ? "memory" : "storage");
      await Promise.all(
        promptIds.map((ids, i) =>
          attention[nodeOf(i)].openSequence({ seqId: `logits-${i}`, layout, maxPositions: ids.length + 1 }),
        ),
      );
      const stream = gpuClient.forward();
      const res = await new Promise<ForwardResponse>((resolve, reject) => {
        stream.once("data", resolve);
        stream.once("error", reject);
        stream.write({
          stepId: 1n,
          sequences: promptIds.map((ids, i) => ({
            seqId: `logits-${i}`,
            startPos: 0,
            nTokens: ids.length,
            attentionAddress: i % 2 === 0 ? memory.address : storage.address,
          })),
          tokens: promptIds.flat(),
        });
      });
      stream.end();
      assert.equal(res.error, undefined, res.error?.message);
      assert.deepEqual(res.logits?.shape, [16, checkpoint.shape.vocabSize]);
      const logits = tensorF32(res.logits);
      let maxDiff = 0;
      promptIds.forEach((ids, i) => {
        const state = reference.createState();
        let ref!: Float32Array;
        ids.forEach((tok, pos) => (ref = reference.forward(state, tok, pos)));
        for (let v = 0; v < checkpoint.shape.vocabSize; v++) {
          maxDiff = Math.max(maxDiff, Math.abs(logits[i * checkpoint.shape.vocabSize + v]! - ref[v]!));
        }
      });
      assert.ok(maxDiff <= 1e-4, `max |logit difference| ${maxDiff} > 1e-4`);
      await Promise.all(promptIds.map((_, i) => attention[nodeOf(i)].closeSequence({ seqId: `logits-${i}` })));
    } finally {
      gpuClient.close();
      attention.memory.close();
      attention.storage.close();
    }
  });

  await t.test("tokens match the reference model token for token", async () => {
    const outcome = await generate(coordinator.address, {
      prompts: prompts.map((p, i) => ({
        id: p.id,
        prompt: p.prompt,
        kv: i % 4 === 3 ? KvPlacement.STORAGE : KvPlacement.MEMORY,
      })),
      sampling: { temperature: 0, maxTokens: MAX_TOKENS },
    });
    assert.equal(outcome.results.size, 16);
    assert.equal(outcome.summary?.errors, 0);
    prompts.forEach((p, i) => {
      const r = outcome.results.get(p.id)!;
      assert.deepEqual(r.promptTokenIds, promptIds[i]);
      const expected = referenceGreedy(reference, tokenizer, promptIds[i]!, MAX_TOKENS);
      assert.deepEqual(r.completionTokenIds, expected, `prompt ${p.id}`);
      assert.equal(r.finishReason, expected.length === MAX_TOKENS ? "length" : "stop");
      assert.equal(r.completion, tokenizer.decode(expected, promptIds[i]!.at(-1)));
    });
    assert.ok(outcome.results.get("s04")!.kvNode.startsWith("storage@"));
    assert.ok(outcome.results.get("s01")!.kvNode.startsWith("memory@"));
  });
});
