// Issue 13: a header field could make a node allocate without bound (a 624 KB
// checkpoint whose seq_len read 16,777,215, a config.json with
// max_position_embeddings 1e9), and configs that disagree with their tensors
// in ways the shape check missed loaded, or failed blaming something else.
// Each is now refused at load, naming the file and the field.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CheckpointError } from "@tessera/core";
import {
  MODEL_LIMITS,
  createHfTokenizer,
  llama2cToHfTokenizer,
  loadCheckpoint,
  loadModel,
  loadTokenizer,
  readModelHeader,
  readSafetensorsHeader,
  writeCheckpoint,
  writeHfModel,
} from "../src/index.js";

const MODELS = new URL("../../../../shared/models/", import.meta.url).pathname;
const STORIES = join(MODELS, "stories260K.bin");
const TOK512 = join(MODELS, "tok512.bin");

async function tmp(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-limits-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Asserts `promise` rejects with a CheckpointError naming `path` and matching `field`. */
async function refused(promise: Promise<unknown>, path: string, field: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof CheckpointError, String(err));
    assert.equal(err.path, path);
    assert.match(err.message, field);
    return true;
  });
}

/** stories260K written as a version-1 llama2.c file with int32 header field `index` (0 = dim) set to `value`. */
async function v1WithField(t: TestContext, index: number, value: number): Promise<string> {
  const path = join(await tmp(t), "model.bin");
  const ckpt = await loadCheckpoint(STORIES);
  await writeCheckpoint(path, ckpt.shape, ckpt.weights);
  const bytes = await readFile(path);
  bytes.writeInt32LE(value, 8 + 4 * index);
  await writeFile(path, bytes);
  return path;
}

/** stories260K as a Hugging Face folder whose config.json `edit` changes. */
async function hfWithConfig(t: TestContext, edit: (c: Record<string, unknown>) => void): Promise<string> {
  const dir = join(await tmp(t), "m");
  const ckpt = await loadCheckpoint(STORIES);
  await writeHfModel(dir, ckpt.shape, ckpt.weights);
  const path = join(dir, "config.json");
  const config = JSON.parse(await readFile(path, "utf8")) as Record<string, unknown>;
  edit(config);
  await writeFile(path, JSON.stringify(config));
  return dir;
}

test("a llama2.c checkpoint whose seq_len reads 16,777,215 is refused naming seq_len", async (t) => {
  const path = await v1WithField(t, 6, 16_777_215);
  await refused(readModelHeader(path), path, /seq_len = 16777215 exceeds the maximum 1048576/);
  assert.equal(MODEL_LIMITS.maxSeqLen, 1_048_576);
});

test("a llama2.c header with a million layers is refused by the file's size, before a per-layer table", async (t) => {
  const path = await v1WithField(t, 2, 1_000_000);
  const started = Date.now();
  await refused(readModelHeader(path), path, /size does not match its llama2c-v1 header/);
  assert.ok(Date.now() - started < 2000, "refused before allocating per layer");
});

test("a config.json with max_position_embeddings 1e9 is refused naming the field", async (t) => {
  const dir = await hfWithConfig(t, (c) => (c["max_position_embeddings"] = 1e9));
  await refused(
    readModelHeader(dir),
    join(dir, "config.json"),
    /max_position_embeddings = 1000000000 exceeds the maximum 1048576/,
  );
});

test("a config.json with fewer num_hidden_layers than the tensors hold is refused naming num_hidden_layers", async (t) => {
  const dir = await hfWithConfig(t, (c) => (c["num_hidden_layers"] = 4));
  await refused(loadModel(dir), join(dir, "config.json"), /num_hidden_layers = 4, but the safetensors hold 5 layers/);
});

test("a config.json with more num_hidden_layers than the tensors hold is refused naming num_hidden_layers", async (t) => {
  const dir = await hfWithConfig(t, (c) => (c["num_hidden_layers"] = 100_000));
  await refused(
    readModelHeader(dir),
    join(dir, "config.json"),
    /num_hidden_layers = 100000, but the safetensors hold 5 layers/,
  );
});

test("a config.json with a negative rope_theta is refused naming rope_theta", async (t) => {
  const dir = await hfWithConfig(t, (c) => (c["rope_theta"] = -10000));
  await refused(readModelHeader(dir), join(dir, "config.json"), /rope_theta = -10000 is not a positive finite number/);
});

test("a config.json with a zero rms_norm_eps is refused naming rms_norm_eps", async (t) => {
  const dir = await hfWithConfig(t, (c) => (c["rms_norm_eps"] = 0));
  await refused(readModelHeader(dir), join(dir, "config.json"), /rms_norm_eps = 0 is not a positive finite number/);
});

test("a safetensors file whose tensors' data_offsets overlap is refused naming both tensors", async (t) => {
  const path = join(await tmp(t), "x.safetensors");
  const header = JSON.stringify({
    a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
    b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
  });
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(header)));
  await writeFile(path, Buffer.concat([len, Buffer.from(header), Buffer.alloc(16)]));
  await refused(readSafetensorsHeader(path), path, /tensor b data_offsets \[8, 16\] overlap tensor a's \[0, 16\]/);
});

test("a safetensors shape too large to hold is refused naming the tensor", async (t) => {
  const path = join(await tmp(t), "x.safetensors");
  const header = JSON.stringify({ a: { dtype: "F32", shape: [2 ** 30, 2 ** 30, 2 ** 30], data_offsets: [0, 0] } });
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(header)));
  await writeFile(path, Buffer.concat([len, Buffer.from(header)]));
  await refused(readSafetensorsHeader(path), path, /tensor a has a shape too large/);
});

test("a tokenizer.json with far fewer entries than the model's vocab_size is refused; padding is allowed", async () => {
  const files = llama2cToHfTokenizer(await loadTokenizer(TOK512, 512));
  assert.throws(
    () => createHfTokenizer("t.json", files.tokenizer, 32000),
    (err: unknown) => {
      assert.ok(err instanceof CheckpointError);
      assert.match(err.message, /^t\.json: tokenizer has 512 ids, fewer than the model's vocab_size 32000/);
      return true;
    },
  );
  // Padded embeddings (up to 128 ids here) still load; the extra ids decode to "".
  assert.equal(createHfTokenizer("t.json", files.tokenizer, 640).decode([600]), "");
});

test("a llama2.c header whose dim / n_heads is odd is refused naming head_dim", async (t) => {
  // n_heads 64 and n_kv_heads 32 keep stories260K's tensor sizes (dim 64), with a head_dim of 1.
  const path = await v1WithField(t, 3, 64);
  const bytes = await readFile(path);
  bytes.writeInt32LE(32, 8 + 4 * 4);
  await writeFile(path, bytes);
  await refused(readModelHeader(path), path, /head_dim 1 \(dim \/ n_heads\) is odd/);
});
