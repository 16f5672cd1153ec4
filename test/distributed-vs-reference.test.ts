/**
 * Done-when #2 of issue 2: every prompt of ../shared/prompts/stories.jsonl,
 * run as one batch of 16 through real gpu-, memory- and storage-nodes over
 * gRPC, gives token for token what the single-process reference forward
 * pass (plain TypeScript loops, packages/model/src/reference-model.ts) gives,
 * and the logits of the first (prefill) step agree to 1e-4. That holds with
 * activations on the wire in f32 (asked for explicitly). With the default
 * f16 wire (issue 3) the logits agree to F16_LOGITS_TOLERANCE, and greedy
 * tokens match the reference up to the first near-tie: a step where the
 * reference's two best logits are closer than twice that tolerance, where
 * f16 rounding may pick the other one (seen at 64 tokens: 14 of 16 prompts
 * identical, s07 and s08 diverge at top-2 margins of 0.004 and 0.0009).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Attention, GpuNode, KvPlacement, createClient, type ForwardResponse } from "@tessera/proto";
import { parsePromptsJsonl, tensorF32, type WireDtype } from "@tessera/core";
import { ReferenceModel, loadCheckpoint, loadTokenizer, type Tokenizer } from "@tessera/model";
import { bundled, generate, startInProcessCluster } from "@tessera/testing";

const MAX_TOKENS = 64;
/**
 * Largest |logit difference| accepted with f16 activations on the wire:
 * each q/k/v/o/hidden value is rounded to 11 significant bits (relative
 * error <= 2^-12), which moves stories260K's logits (magnitude ~10) by ~1e-2
 * (seen: <= 0.01 on these prompts).
 */
const F16_LOGITS_TOLERANCE = 0.05;

async function setup(t: import("node:test").TestContext, wireDtype: WireDtype) {
  const { gpus, memories, storages, coordinator } = await startInProcessCluster(t, {
    storageNodes: 1,
    gpu: { wireDtype },
  });
  return { gpu: gpus[0]!, memory: memories[0]!, storage: storages[0]!, coordinator };
}

/**
 * Greedy generation with the reference model, as run.c: stop at BOS/EOS or
 * after maxTokens. `margins[i]` is the gap between the two best logits at
 * the step that chose token i (or the stop).
 */
function referenceGreedy(
  model: ReferenceModel,
  tokenizer: Tokenizer,
  promptIds: number[],
  maxTokens: number,
  margins: number[] = [],
): number[] {
  const state = model.createState();
  const out: number[] = [];
  let logits!: Float32Array;
  promptIds.forEach((tok, pos) => (logits = model.forward(state, tok, pos)));
  let pos = promptIds.length;
  for (;;) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    let second = -Infinity;
    for (let i = 0; i < logits.length; i++) if (i !== best) second = Math.max(second, logits[i]!);
    margins.push(logits[best]! - second);
    if (best === tokenizer.bos || best === tokenizer.eos) break;
    out.push(best);
    if (out.length >= maxTokens) break;
    logits = model.forward(state, best, pos++);
  }
  return out;
}

for (const wireDtype of ["f32", "f16"] as const) {
  const tolerance = wireDtype === "f32" ? 1e-4 : F16_LOGITS_TOLERANCE;
  test(`${wireDtype} wire: a batch of 16 prompts through the cluster gives the reference model's tokens and first-step logits`, async (t) => {
    const { gpu, memory, storage, coordinator } = await setup(t, wireDtype);
    const checkpoint = await loadCheckpoint(bundled.model);
    const tokenizer = await loadTokenizer(bundled.tokenizer, checkpoint.shape.vocabSize);
    const reference = new ReferenceModel(checkpoint);
    const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"));
    assert.equal(prompts.length, 16);
    const promptIds = prompts.map((p) => tokenizer.encode(p.prompt, { bos: true, eos: false }));

    await t.test(`first-step logits match to ${tolerance}`, async () => {
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
        t.diagnostic(`${wireDtype}: max |logit difference| ${maxDiff}`);
        assert.ok(maxDiff <= tolerance, `max |logit difference| ${maxDiff} > ${tolerance}`);
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
      let identical = 0;
      prompts.forEach((p, i) => {
        const r = outcome.results.get(p.id)!;
        assert.deepEqual(r.promptTokenIds, promptIds[i]);
        const margins: number[] = [];
        const expected = referenceGreedy(reference, tokenizer, promptIds[i]!, MAX_TOKENS, margins);
        const got = r.completionTokenIds;
        if (wireDtype === "f16") {
          // Equal up to the first near-tie; past it the texts may part.
          const tie = margins.findIndex((m) => m < 2 * tolerance);
          const until = tie < 0 ? Infinity : tie;
          let same = 0;
          while (same < expected.length && got[same] === expected[same]) same++;
          if (same !== expected.length || got.length !== expected.length) {
            assert.ok(same >= until, `prompt ${p.id}: token ${same} differs before the first near-tie (${until})`);
            t.diagnostic(`${p.id}: f16 parts from the reference at token ${same} (top-2 margin ${margins[same]})`);
            return;
          }
        }
        assert.deepEqual(got, expected, `prompt ${p.id}`);
        assert.equal(r.finishReason, expected.length === MAX_TOKENS ? "length" : "stop");
        assert.equal(r.completion, tokenizer.decode(expected, promptIds[i]!.at(-1)));
        identical++;
      });
      t.diagnostic(`${wireDtype}: ${identical} of 16 prompts token-identical to the reference`);
      assert.ok(outcome.results.get("s04")!.kvNode.startsWith("storage@"));
      assert.ok(outcome.results.get("s01")!.kvNode.startsWith("memory@"));
    });
  });
}
