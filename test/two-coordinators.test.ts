/**
 * Two coordinators with different models sharing the same gpu-nodes (two
 * pipeline stages, listed in opposite orders): the gpu-nodes' model leases
 * make each coordinator's Load wait while the other's jobs run, and every
 * step names the model it was planned for, so every result is either the
 * tokens its coordinator gives alone or an error naming the gpu-node, never
 * another model's tokens (before the lease, 192 results came back wrong).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createCoordinator } from "@tessera/coordinator";
import { readCheckpointHeader, synthesizeWeights, writeCheckpoint } from "@tessera/model";
import type { Result } from "@tessera/proto";
import { bundled, generate, startInProcessCluster, tempDir } from "@tessera/testing";

const PROMPTS = ["Once upon a time", "The cat sat", "A little girl", "Tom and his dog"];

for (const order of ["the same order", "opposite orders"] as const) {
  test(`two coordinators on different models sharing two gpu-nodes (${order}): every result is its solo tokens or a named error`, async (t) => {
    const dir = await tempDir();
    t.after(() => dir.remove());
    // The second coordinator's model: the bundled shape (and tokenizer), other weights.
    const other = join(dir.path, "other.bin");
    const shape = (await readCheckpointHeader(bundled.model)).shape;
    await writeCheckpoint(other, shape, synthesizeWeights(shape, 7));

    const cluster = await startInProcessCluster(t, {
      gpuNodes: 2,
      gpu: { wireDtype: "f32", leaseTtlMs: 500, log: () => {} },
      coordinator: { modelPath: bundled.model },
    });
    const gpus = cluster.gpus.map((g) => g.address);
    const b = createCoordinator({
      // Each coordinator plans its own stages on the same nodes.
      gpuNodes: order === "the same order" ? gpus : gpus.reverse(),
      memoryNodes: cluster.memories.map((m) => m.address),
      modelPath: other,
      tokenizerPath: bundled.tokenizer,
      log: () => {},
    });
    t.after(() => b.close());
    await b.start();
    const job = (address: string, id: string) =>
      generate(address, {
        jobId: id,
        prompts: PROMPTS.map((prompt, i) => ({ id: `p${i}`, prompt })),
        sampling: { temperature: 0, maxTokens: 48 },
      });

    const soloA = (await job(cluster.address, "solo-a")).results;
    const soloB = (await job(b.address, "solo-b")).results;
    for (const [id, r] of soloA) {
      assert.equal(r.error, "", `${id}: ${r.error}`);
      assert.notDeepEqual(r.completionTokenIds, soloB.get(id)!.completionTokenIds, `${id}: the models differ`);
    }

    const runs = await Promise.all([
      job(cluster.address, "a1"),
      job(b.address, "b1"),
      job(cluster.address, "a2"),
      job(b.address, "b2"),
    ]);
    const solos = [soloA, soloB, soloA, soloB];
    let correct = 0;
    runs.forEach((run, j) => {
      assert.equal(run.results.size, PROMPTS.length);
      for (const [id, r] of run.results as Map<string, Result>) {
        if (r.finishReason === "error") {
          assert.match(r.error, /gpu-node \S+/, `job ${j} ${id}: an error names the gpu-node`);
          continue;
        }
        assert.deepEqual(
          r.completionTokenIds,
          solos[j]!.get(id)!.completionTokenIds,
          `job ${j} ${id}: its solo tokens`,
        );
        correct++;
      }
    });
    // The coordinators waited for each other's leases: all of them ran.
    assert.equal(correct, runs.length * PROMPTS.length);
  });
}
