import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CheckpointError, f16ToF32, f32BitsToF16Bits } from "@tessera/core";
import {
  bf16ToF32,
  createHfTokenizer,
  decodeTensor,
  encodeTensor,
  f32ToBf16,
  llama2cToHfTokenizer,
  loadCheckpoint,
  loadHfModel,
  loadModel,
  loadModelTokenizer,
  loadTokenizer,
  permuteRotaryFromHf,
  permuteRotaryToHf,
  readModelHeader,
  readSafetensors,
  writeHfModel,
  writeSafetensors,
  type LlamaWeights,
  type SafetensorsDtype,
} from "../src/index.js";

const MODELS = new URL("../../../../shared/models/", import.meta.url).pathname;
const STORIES = join(MODELS, "stories260K.bin");
const TOK512 = join(MODELS, "tok512.bin");
const PROMPTS = new URL("../../../../shared/prompts/stories.jsonl", import.meta.url).pathname;

async function tmp(t: import("node:test").TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-hf-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const f32Cell = new Float32Array(1);
const u32Cell = new Uint32Array(f32Cell.buffer);
/** f16 bits of a number through the wire codec (the one safetensors uses). */
const f32ToF16 = (x: number) => ((f32Cell[0] = x), f32BitsToF16Bits(u32Cell[0]!));

/** Values that exercise rounding, subnormals and specials. */
function samples(n: number): Float32Array {
  const out = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = ((s / 2 ** 32) * 2 - 1) * 2 ** ((i % 20) - 10);
  }
  if (n >= 9) out.set([0, -0, 1, -2.5, 65504, 1e-7, 3.0517578125e-5, Infinity, -Infinity], 0);
  return out;
}

test("f16 and bf16 conversions are exact on representable values and round to nearest even", () => {
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(-2), 0xc000);
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(65520), 0x7c00); // rounds up to inf
  assert.equal(f32ToF16(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // tie → even (down)
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // tie → even (up)
  assert.equal(f16ToF32(0x0001), 2 ** -24);
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
  assert.equal(f32ToBf16(1), 0x3f80);
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie → even (down)
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82); // tie → even (up)
  assert.equal(bf16ToF32(0xc040), -3);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
});

test("decodeTensor reads tensors at odd offsets of a Node Buffer (slice() there is a view, not a copy)", () => {
  const values = Float32Array.from([1, -2.5, 65504, 2 ** -24, -0]);
  for (const dtype of ["F32", "F16", "BF16"] as const) {
    const encoded = encodeTensor(values, dtype);
    const buf = Buffer.alloc(encoded.byteLength + 1);
    buf.set(encoded, 1); // from byteOffset 1: unaligned for every dtype
    const view = buf.subarray(1);
    assert.notEqual(view.byteOffset % 2, 0);
    const want = decodeTensor(encoded, dtype);
    assert.deepEqual([...decodeTensor(view, dtype)], [...want], dtype);
  }
  // Two F16 values at an odd offset of a pooled Buffer.
  const buf = Buffer.from([0, 0x00, 0x3c, 0x00, 0xc0, 0]);
  assert.deepEqual([...decodeTensor(buf.subarray(1, 5), "F16")], [1, -2]);
});

test("encodeTensor F16 is the wire codec: NaN stays a quiet NaN, overflow is inf", () => {
  const values = Float32Array.from([NaN, -NaN, 65520, -1e9, 1 + 2 ** -11, 2 ** -25, 3 * 2 ** -25]);
  const bits = new Uint16Array(encodeTensor(values, "F16").buffer);
  assert.equal(bits[0]! & 0x7e00, 0x7e00);
  assert.equal(bits[1]! & 0x7e00, 0x7e00);
  assert.deepEqual([...bits.subarray(2)], [0x7c00, 0xfc00, 0x3c00, 0x0000, 0x0002]);
  assert.ok(Number.isNaN(decodeTensor(encodeTensor(values, "F16"), "F16")[0]));
});

test("safetensors round trip: F32 exact, F16 and BF16 within half an ulp", async (t) => {
  const dir = await tmp(t);
  const a = samples(1000);
  const b = samples(6).map((x) => x * 3);
  for (const dtype of ["F32", "F16", "BF16"] as SafetensorsDtype[]) {
    const path = join(dir, `${dtype}.safetensors`);
    await writeSafetensors(
      path,
      [
        { name: "a", shape: [10, 100], data: a },
        { name: "b.weight", shape: [2, 3], data: b },
      ],
      { dtype, metadata: { format: "pt" } },
    );
    const raw = await readFile(path);
    const n = Number(raw.readBigUInt64LE(0));
    assert.equal((8 + n) % 8, 0, "data section 8-byte aligned");
    const header = JSON.parse(raw.toString("utf8", 8, 8 + n)) as Record<string, unknown>;
    assert.deepEqual(header["__metadata__"], { format: "pt" });
    assert.deepEqual(header["b.weight"], {
      dtype,
      shape: [2, 3],
      data_offsets: dtype === "F32" ? [4000, 4024] : [2000, 2012],
    });
    const read = await readSafetensors(path);
    assert.deepEqual([...read.tensors.keys()], ["a", "b.weight"]);
    assert.deepEqual(read.tensors.get("a")!.shape, [10, 100]);
    const got = read.tensors.get("a")!.data;
    for (let i = 0; i < a.length; i++) {
      const x = a[i]!;
      const want = dtype === "F32" ? x : dtype === "F16" ? f16ToF32(f32ToF16(x)) : bf16ToF32(f32ToBf16(x));
      assert.equal(got[i], Math.fround(want), `${dtype}[${i}]`);
      if (dtype !== "F32" && Number.isFinite(x) && Math.abs(x) < 60000) {
        // Relative error of f16 (11-bit significand) / bf16 (8-bit), or f16's subnormal step.
        const tol = dtype === "F16" ? Math.max(Math.abs(x) * 2 ** -11, 2 ** -25) : Math.abs(x) * 2 ** -8;
        assert.ok(Math.abs(got[i]! - x) <= tol, `${dtype}[${i}] ${x} -> ${got[i]}`);
      }
    }
  }
});

test("safetensors errors name the file: truncated, bad header, bad dtype", async (t) => {
  const dir = await tmp(t);
  const path = join(dir, "m.safetensors");
  await writeSafetensors(path, [{ name: "w", shape: [4, 4], data: samples(16) }]);
  await truncate(path, 100); // 72-byte header + 28 of 64 data bytes
  await assert.rejects(readSafetensors(path), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.path, path);
    assert.match(err.message, /tensor w ends past the end of the file \(truncated\?\)/);
    return true;
  });
  const bad = join(dir, "bad.safetensors");
  const json = Buffer.from("{not json");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await writeFile(bad, Buffer.concat([len, json]));
  await assert.rejects(readSafetensors(bad), /bad\.safetensors: safetensors header is not valid JSON/);
  const i8 = join(dir, "i8.safetensors");
  const j2 = Buffer.from(JSON.stringify({ w: { dtype: "I8", shape: [1], data_offsets: [0, 1] } }));
  len.writeBigUInt64LE(BigInt(j2.length));
  await writeFile(i8, Buffer.concat([len, j2, Buffer.alloc(1)]));
  await assert.rejects(readSafetensors(i8), /i8\.safetensors: tensor w has dtype I8; only F32, F16 and BF16 are read/);
  await assert.rejects(
    readSafetensors(join(dir, "none.safetensors")),
    /none\.safetensors: cannot read safetensors file/,
  );
});

test("q/k rotary permutation: a hand-checked head and an exact round trip", () => {
  // 1 head, head_dim 4, dim 1: Meta rows (pairs) 0,1 | 2,3 → HF rows (halves) 0,2 | 1,3.
  assert.deepEqual([...permuteRotaryToHf(Float32Array.of(10, 11, 12, 13), 1, 4, 1)], [10, 12, 11, 13]);
  // 2 heads, head_dim 6, dim 2: per head, HF row j*3 + i = Meta row 2i + j.
  const meta = Float32Array.from({ length: 24 }, (_, k) => k);
  const hf = permuteRotaryToHf(meta, 2, 6, 2);
  const metaRows = [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11];
  assert.deepEqual(
    [...hf],
    metaRows.flatMap((r) => [2 * r, 2 * r + 1]),
  );
  assert.deepEqual([...permuteRotaryFromHf(hf, 2, 6, 2)], [...meta]);
  assert.throws(() => permuteRotaryToHf(new Float32Array(10), 1, 4, 2), RangeError);
});

function assertSameWeights(a: LlamaWeights, b: LlamaWeights): void {
  assert.deepEqual(a.tokenEmbedding, b.tokenEmbedding);
  assert.deepEqual(a.rmsFinal, b.rmsFinal);
  assert.deepEqual(a.classifier, b.classifier);
  assert.equal(a.layers.length, b.layers.length);
  a.layers.forEach((l, i) => {
    for (const k of Object.keys(l) as (keyof typeof l)[]) assert.deepEqual(l[k], b.layers[i]![k], `layer ${i} ${k}`);
  });
}

test("stories260K exported as an f32 HF folder loads back with identical weights (single file and sharded)", async (t) => {
  const dir = await tmp(t);
  const ckpt = await loadCheckpoint(STORIES);
  const single = join(dir, "single");
  assert.deepEqual(await writeHfModel(single, ckpt.shape, ckpt.weights), ["config.json", "model.safetensors"]);
  const hf = await loadModel(single);
  assert.equal(hf.format, "hf");
  assert.deepEqual(hf.shape, ckpt.shape);
  assert.equal(hf.sharedClassifier, true);
  assert.equal(hf.weights.classifier, hf.weights.tokenEmbedding);
  assertSameWeights(hf.weights, ckpt.weights);
  // q rows really are permuted in the file (not a no-op round trip).
  const file = await readSafetensors(join(single, "model.safetensors"));
  assert.notDeepEqual(file.tensors.get("model.layers.0.self_attn.q_proj.weight")!.data, ckpt.weights.layers[0]!.wq);
  assert.deepEqual(file.tensors.get("model.layers.0.self_attn.v_proj.weight")!.data, ckpt.weights.layers[0]!.wv);
  const config = JSON.parse(await readFile(join(single, "config.json"), "utf8")) as Record<string, unknown>;
  assert.equal(config["max_position_embeddings"], 512);
  assert.equal(config["num_key_value_heads"], 4);

  const sharded = join(dir, "sharded");
  const files = await writeHfModel(sharded, ckpt.shape, ckpt.weights, { shardBytes: 300_000 });
  assert.deepEqual(files, [
    "config.json",
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
    "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
    "model.safetensors.index.json",
  ]);
  const h = await readModelHeader(sharded);
  assert.equal(h.format, "hf");
  assertSameWeights((await loadHfModel(sharded)).weights, ckpt.weights);
  // The llama2.c file still dispatches to the llama2.c loader.
  assert.equal((await readModelHeader(STORIES)).format, "llama2c-legacy");

  for (const dtype of ["f16", "bf16"] as const) {
    const d = join(dir, dtype);
    await writeHfModel(d, ckpt.shape, ckpt.weights, { dtype });
    const loaded = await loadHfModel(d);
    assert.equal(loaded.dtype, dtype === "f16" ? "F16" : "BF16");
    const round = dtype === "f16" ? (x: number) => f16ToF32(f32ToF16(x)) : (x: number) => bf16ToF32(f32ToBf16(x));
    assert.deepEqual(loaded.weights.layers[3]!.wk, ckpt.weights.layers[3]!.wk.map(round));
  }
});

test("HF folder errors name the file: missing tensor, missing shard, bad config", async (t) => {
  const dir = await tmp(t);
  const ckpt = await loadCheckpoint(STORIES);
  const sharded = join(dir, "m");
  await writeHfModel(sharded, ckpt.shape, ckpt.weights, { shardBytes: 300_000 });
  const indexPath = join(sharded, "model.safetensors.index.json");
  const index = JSON.parse(await readFile(indexPath, "utf8")) as { weight_map: Record<string, string> };
  delete index.weight_map["model.layers.2.mlp.up_proj.weight"];
  await writeFile(indexPath, JSON.stringify(index));
  await assert.rejects(loadHfModel(sharded), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.match(err.message, /has no tensor model\.layers\.2\.mlp\.up_proj\.weight/);
    return true;
  });
  await rm(join(sharded, "model-00002-of-00004.safetensors"));
  await assert.rejects(loadHfModel(sharded), /model-00002-of-00004\.safetensors: cannot read safetensors file/);

  const single = join(dir, "s");
  await writeHfModel(single, ckpt.shape, ckpt.weights);
  const st = join(single, "model.safetensors");
  await truncate(st, (await readFile(st)).length - 4);
  await assert.rejects(
    loadModel(single),
    /model\.safetensors: tensor model\.norm\.weight ends past the end of the file/,
  );
  await writeFile(join(single, "config.json"), JSON.stringify({ hidden_size: 64 }));
  await assert.rejects(loadModel(single), /config\.json: has no intermediate_size/);
  await assert.rejects(loadModel(join(dir, "nothing")), /nothing: cannot read checkpoint/);
});

test("tok512 converted to tokenizer.json encodes the 16 sample prompts to llama2.c's ids and decodes them back", async (t) => {
  const tok = await loadTokenizer(TOK512, 512);
  const files = llama2cToHfTokenizer(tok);
  const dir = await tmp(t);
  await writeFile(join(dir, "tokenizer.json"), JSON.stringify(files.tokenizer));
  await writeFile(join(dir, "tokenizer_config.json"), JSON.stringify(files.config));
  const hf = await loadModelTokenizer(join(dir, "tokenizer.json"), 512);
  assert.equal(hf.bos, 1);
  assert.equal(hf.eos, 2);
  assert.equal(hf.vocabSize, 512);
  const prompts = (await readFile(PROMPTS, "utf8"))
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { prompt: string }).prompt);
  assert.equal(prompts.length, 16);
  for (const p of [...prompts, "", "héllo wörld 日本 😀\n\ttab  two spaces"]) {
    const want = tok.encode(p, { bos: true, eos: true });
    const got = hf.encode(p, { bos: true, eos: true });
    assert.deepEqual(got, want, JSON.stringify(p));
    const body = got.slice(1, -1);
    assert.equal(hf.decode(body), tok.decode(body), JSON.stringify(p));
    assert.equal(hf.decode(body), p);
    // Streaming, one token at a time, gives the same text.
    const d = hf.createDecoder();
    assert.equal(body.map((x) => d.push(x)).join("") + d.flush(), p);
  }
  // After a non-BOS token the leading space of a piece is kept, as run.c.
  const once = tok.encode("Once upon a time", { bos: false, eos: false });
  for (let k = 1; k < once.length; k++)
    assert.equal(hf.decode(once.slice(k), once[k - 1]), tok.decode(once.slice(k), once[k - 1]));
  assert.equal(hf.decode(once.slice(-1), once.at(-2)), " time");
  // A character split over byte tokens comes out whole, only when complete.
  const ids = hf.encode("日", { bos: false, eos: false });
  assert.deepEqual(
    ids.map((i) => hf.piece(i)),
    [" ".replace(" ", "\u2581"), "<0xE6>", "<0x97>", "<0xA5>"].map((s) => Buffer.from(s).toString("latin1")),
  );
  const d = hf.createDecoder(ids[0]);
  assert.deepEqual(
    ids.slice(1).map((x) => d.push(x)),
    ["", "", "日"],
  );
});

test("createHfTokenizer rejects a vocabulary larger than the model's and a missing BOS", async () => {
  const files = llama2cToHfTokenizer(await loadTokenizer(TOK512, 512));
  assert.throws(
    () => createHfTokenizer("t.json", files.tokenizer, 500),
    /t\.json: tokenizer has ids up to 511, more than the model's vocab_size 500/,
  );
  assert.throws(
    () => createHfTokenizer("t.json", files.tokenizer, 512, { bos_token: "<bos>" }),
    /t\.json: has no BOS token "<bos>"/,
  );
});

test("Mistral and Qwen2 configs: a Mistral sliding_window caps the context; Qwen2 reads q/k/v biases; stray biases are refused", async (t) => {
  const dir = await tmp(t);
  const ckpt = await loadCheckpoint(STORIES);
  const folder = join(dir, "m");
  await writeHfModel(folder, ckpt.shape, ckpt.weights);
  const configPath = join(folder, "config.json");
  const config = JSON.parse(await readFile(configPath, "utf8")) as Record<string, unknown>;

  // Mistral: same tensors as Llama; sliding_window below max_position_embeddings caps seq_len.
  await writeFile(
    configPath,
    JSON.stringify({ ...config, architectures: ["MistralForCausalLM"], model_type: "mistral", sliding_window: 100 }),
  );
  const mistral = await loadModel(folder);
  assert.equal(mistral.shape.seqLen, 100);
  assertSameWeights(mistral.weights, ckpt.weights);
  await writeFile(configPath, JSON.stringify({ ...config, model_type: "mistral", sliding_window: null }));
  assert.equal((await readModelHeader(folder)).shape.seqLen, ckpt.shape.seqLen);

  // Qwen2 config without bias tensors: the missing tensor is named.
  await writeFile(configPath, JSON.stringify({ ...config, model_type: "qwen2", sliding_window: 100 }));
  await assert.rejects(loadModel(folder), /has no tensor model\.layers\.0\.self_attn\.q_proj\.bias/);

  // Qwen2 with biases: they load (q and k biases un-permuted like their rows), and sliding_window is ignored
  // without use_sliding_window.
  const withBias = {
    ...ckpt.weights,
    layers: ckpt.weights.layers.map((l, i) => ({
      ...l,
      bq: new Float32Array(l.wq.length / ckpt.shape.dim).map((_, j) => j + i),
      bk: new Float32Array(l.wk.length / ckpt.shape.dim).map((_, j) => -j - i),
      bv: new Float32Array(l.wv.length / ckpt.shape.dim).fill(0.5 + i),
    })),
  };
  const qwen = join(dir, "q");
  await writeHfModel(qwen, ckpt.shape, withBias);
  const qconfig = JSON.parse(await readFile(join(qwen, "config.json"), "utf8")) as Record<string, unknown>;
  assert.deepEqual([qconfig["model_type"], qconfig["architectures"]], ["qwen2", ["Qwen2ForCausalLM"]]);
  await writeFile(join(qwen, "config.json"), JSON.stringify({ ...qconfig, sliding_window: 100 }));
  const loaded = await loadHfModel(qwen);
  assert.equal(loaded.qkvBias, true);
  assert.equal(loaded.shape.seqLen, ckpt.shape.seqLen);
  loaded.weights.layers.forEach((l, i) => {
    assert.deepEqual(l.bq, withBias.layers[i]!.bq);
    assert.deepEqual(l.bk, withBias.layers[i]!.bk);
    assert.deepEqual(l.bv, withBias.layers[i]!.bv);
  });
  const { tensors } = await readSafetensors(join(qwen, "model.safetensors"));
  assert.notDeepEqual(tensors.get("model.layers.0.self_attn.q_proj.bias")!.data, withBias.layers[0]!.bq);

  // A Llama config (no attention_bias) with bias tensors is refused, naming the tensor.
  await writeFile(
    join(qwen, "config.json"),
    JSON.stringify({ ...qconfig, model_type: "llama", attention_bias: false }),
  );
  await assert.rejects(loadModel(qwen), /q_proj\.bias, which this config does not use/);
});
