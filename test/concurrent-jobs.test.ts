/**
 * Concurrent jobs share one gpu-node: jobs on the same model run together,
 * a job on another model waits for them, and neither changes the other's
 * tokens.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { readCheckpointHeader, synthesizeWeights, writeCheckpoint } from "@tessera/model";
import { Code, RpcError } from "@tessera/proto";
import { bundled, generate, startInProcessCluster, tempDir } from "@tessera/testing";

test("jobs on two different models at once each get their solo tokens", async (t) => {
  const dir = await tempDir();
  // A second model with the bundled tokenizer's vocabulary.
  const other = join(dir.path, "other.bin");
  const shape = {
    ...(await readCheckpointHeader(bundled.model)).shape,
    dim: 32,
    hiddenDim: 96,
    nLayers: 2,
    headDim: 4,
  };
  await writeCheckpoint(other, shape, synthesizeWeights(shape, 3));
  t.after(() => dir.remove());
  const { coordinator } = await startInProcessCluster(t, { coordinator: { models: [other] } });
  const job = (model: string, id: string) =>
    generate(coordinator.address, {
      jobId: id,
      modelPath: model,
      prompts: [{ id: "p", prompt: "Once upon a time" }],
      sampling: { temperature: 0, maxTokens: 200 },
    });
  const soloA = (await job(bundled.model, "solo-a")).results.get("p")!;
  const soloB = (await job(other, "solo-b")).results.get("p")!;
  assert.notDeepEqual(soloA.completionTokenIds, soloB.completionTokenIds);

  const [a, b] = await Promise.all([job(bundled.model, "a"), job(other, "b")]);
  assert.deepEqual(a.results.get("p")!.completionTokenIds, soloA.completionTokenIds);
  assert.deepEqual(b.results.get("p")!.completionTokenIds, soloB.completionTokenIds);
});

test("a job id that is already running is refused", async (t) => {
  const { coordinator } = await startInProcessCluster(t);
  const request = { jobId: "same", prompts: [{ id: "p", prompt: "" }], sampling: { temperature: 0, maxTokens: 256 } };
  const first = generate(coordinator.address, request);
  await new Promise((r) => setTimeout(r, 300));
  await assert.rejects(generate(coordinator.address, request), (err: unknown) => {
    const e = RpcError.from(err);
    return e.code === Code.ALREADY_EXISTS && /job_id: a job "same" is already running/.test(e.message);
  });
  assert.equal((await first).results.get("p")!.completionTokenIds.length, 256);
});
