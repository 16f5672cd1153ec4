// Issue 13: a checkpoint whose header field was out of bounds made a node
// allocate without bound; `tessera model info` on such a file now fails
// (exit 1) naming the file and the field.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadCheckpoint, writeCheckpoint } from "@tessera/model";
import { cleanEnv, tessera } from "./cli-run.js";

const STORIES = new URL("../../../../shared/models/stories260K.bin", import.meta.url).pathname;

test("tessera model info on a checkpoint whose seq_len is out of bounds exits 1 naming the file and seq_len", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "tessera-info-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, "model.bin");
  const ckpt = await loadCheckpoint(STORIES);
  await writeCheckpoint(path, ckpt.shape, ckpt.weights);
  const bytes = await readFile(path);
  bytes.writeInt32LE(16_777_215, 8 + 4 * 6); // version-1 header: seq_len is the 7th int32 after magic and version
  await writeFile(path, bytes);
  const r = await tessera(["model", "info", path], { env: cleanEnv() });
  assert.equal(r.code, 1, r.stderr);
  assert.ok(r.stderr.includes(path), r.stderr);
  assert.match(r.stderr, /seq_len = 16777215 exceeds the maximum 1048576/);
});
