/**
 * Prompts that finish before they are admitted (max_tokens 0; a prompt as
 * long as the model's context; sampling parameters the sampler refuses) get
 * their Result at once while the rest of the batch runs: the engine's
 * scheduler releases them like any other. The fuzz test found the last one
 * (seed 1389865168: INTERNAL "Cannot read properties of undefined (reading
 * 'kv')" after the engine split, issue 12).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvPlacement } from "@tessera/proto";
import { generate, startInProcessCluster } from "@tessera/testing";

test("a batch with prompts that finish at admission answers every prompt", async (t) => {
  const { address } = await startInProcessCluster(t);
  const long = "Once upon a time ".repeat(200); // far over stories260K's 512 positions
  const out = await generate(address, {
    prompts: [
      { id: "none", prompt: "Once upon a time", maxTokens: 0 },
      { id: "long", prompt: long, maxTokens: 4 },
      { id: "nan", prompt: "Once upon a time", maxTokens: 4, temperature: Number.NaN },
      { id: "ok", prompt: "Once upon a time", maxTokens: 4 },
    ],
    sampling: { temperature: 0 },
    kv: KvPlacement.MEMORY,
  });
  assert.equal(out.results.size, 4);
  assert.equal(out.results.get("none")!.finishReason, "length");
  assert.deepEqual(out.results.get("none")!.completionTokenIds, []);
  assert.equal(out.results.get("long")!.finishReason, "error");
  assert.match(out.results.get("long")!.error, /the model's context is 512 positions/);
  assert.equal(out.results.get("nan")!.finishReason, "error");
  assert.match(out.results.get("nan")!.error, /^prompt "nan": /);
  assert.equal(out.results.get("ok")!.error, "");
  assert.equal(out.results.get("ok")!.completionTokenIds.length, 4);
  assert.equal(out.summary?.errors, 2);
});
