import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CheckpointError } from "@tessera/core";
import { loadCheckpoint } from "../src/index.js";

/** The shared test models, beside the repository (../shared/models). */
const MODELS = fileURLToPath(new URL("../../../../shared/models/", import.meta.url));
const STORIES = join(MODELS, "stories260K.bin");

const dir = await mkdtemp(join(tmpdir(), "tessera-checkpoint-"));
after(() => rm(dir, { recursive: true, force: true }));

test("stories260K loads with the shape its README gives", async () => {
  const c = await loadCheckpoint(STORIES);
  assert.equal(c.format, "llama2c-legacy");
  assert.equal(c.sharedClassifier, true);
  assert.deepEqual(
    [
      c.shape.dim,
      c.shape.hiddenDim,
      c.shape.nLayers,
      c.shape.nHeads,
      c.shape.nKvHeads,
      c.shape.vocabSize,
      c.shape.seqLen,
    ],
    [64, 172, 5, 8, 4, 512, 512],
  );
  assert.equal(c.expectedBytes, 1056540);
});

test("a truncated checkpoint names the path and both sizes", async () => {
  const path = join(dir, "truncated.bin");
  await writeFile(path, (await readFile(STORIES)).subarray(0, 1000000));
  await assert.rejects(loadCheckpoint(path), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.path, path);
    assert.equal(err.expected, 1056540);
    assert.equal(err.found, 1000000);
    assert.equal(
      err.message,
      `${path}: size does not match its llama2c-legacy header (expected 1056540 bytes, found 1000000)`,
    );
    return true;
  });
});

test("a missing checkpoint names the path", async () => {
  const path = join(dir, "missing.bin");
  await assert.rejects(loadCheckpoint(path), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.path, path);
    assert.ok(err.message.startsWith(`${path}: cannot read checkpoint: ENOENT`), err.message);
    return true;
  });
});
