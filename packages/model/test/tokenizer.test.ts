import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CheckpointError } from "@tessera/core";
import { createDecoder, createTokenizer, loadTokenizer } from "../src/index.js";

/** The shared test models, beside the repository (../shared/models). */
const MODELS = fileURLToPath(new URL("../../../../shared/models/", import.meta.url));
const TOK512 = join(MODELS, "tok512.bin");
const LLAMA_TOKENIZER = join(MODELS, "tokenizer.bin");

const dir = await mkdtemp(join(tmpdir(), "tessera-tokenizer-"));
after(() => rm(dir, { recursive: true, force: true }));

/**
 * A tiny hand-made vocabulary whose merges are worked out by hand below.
 * Byte tokens sit at 16 + byte (not 3 + byte) so the test fails if encode
 * assumes llama2.c's "+3".
 */
function tinyTokenizer() {
  const pieces = [
    "<unk>",
    "\n<s>\n",
    "\n</s>\n",
    " ",
    "a",
    "b",
    "ab",
    "ba",
    " a",
    "aba",
    " ab",
    "x",
    "y",
    "z",
    "xy",
    "yz",
  ];
  const scores = [0, 0, 0, 0, 0, 0, -2, -1, -3, -0.5, -5, 0, 0, 0, -1, -1];
  for (let b = 0; b < 256; b++) {
    pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    scores.push(0);
  }
  return createTokenizer(pieces, scores);
}
const byteId = (b: number) => 16 + b;

test("encode merges the best-scoring pair first, leftmost on ties (hand-worked)", () => {
  const t = tinyTokenizer();
  // " abab": pairs " a"(-3) "ab"(-2) "ba"(-1) "ab"(-2) -> "ba"; then " a"(-3) "aba"(-0.5) -> "aba"; then nothing.
  assert.deepEqual(t.encode("abab", { bos: true, eos: false }), [1, 3, 9, 5]);
  // "xy"(-1) and "yz"(-1) tie: the leftmost wins (run.c's strict >).
  assert.deepEqual(t.encode("xyz", { bos: false, eos: true }), [3, 14, 13, 2]);
  // No dummy prefix for empty text.
  assert.deepEqual(t.encode("", { bos: true, eos: true }), [1, 2]);
  assert.deepEqual(t.encode("", { bos: false, eos: false }), []);
});

test("encode falls back to <0xXX> tokens looked up by spelling, per codepoint", () => {
  const t = tinyTokenizer();
  // "é" = C3 A9, "€" = E2 82 AC, "😀" = F0 9F 98 80; none is a piece.
  assert.deepEqual(t.encode("aé€😀", { bos: false, eos: false }), [
    8,
    byteId(0xc3),
    byteId(0xa9),
    byteId(0xe2),
    byteId(0x82),
    byteId(0xac),
    byteId(0xf0),
    byteId(0x9f),
    byteId(0x98),
    byteId(0x80),
  ]);
});

test("the decoder strips the space after BOS, joins multi-byte characters and drops control bytes", () => {
  const t = tinyTokenizer();
  const d = t.createDecoder();
  assert.equal(d.push(10), "ab"); // " ab" right after BOS loses its space
  assert.equal(d.push(10), " ab");
  assert.equal(d.push(byteId(0xc3)), "");
  assert.equal(d.push(byteId(0xa9)), "é");
  assert.equal(d.push(byteId(0x07)), ""); // BEL: not printable, dropped like run.c's safe_printf
  assert.equal(d.push(byteId(0x0a)), "\n");
  assert.equal(d.push(byteId(0xe2)), "");
  assert.equal(d.push(byteId(0x82)), "");
  assert.equal(d.flush(), "\uFFFD"); // an incomplete character at the end
  // BOS mid-sequence prints its piece (as run.c would) and strips the next space.
  assert.equal(t.decode([10, 8, 1, 8]), "ab a\n<s>\na");
  assert.equal(t.decode([8], 4), " a");
  const free = createDecoder(t, 4); // not after BOS: the space stays
  assert.equal(free.push(8), " a");
  // <0x20> right after BOS is a byte, not a piece with a leading space: run.c prints it.
  assert.equal(t.decode([byteId(0x20), 8]), "  a");
  assert.throws(() => d.push(t.vocabSize), RangeError);
});

test("tok512: encode/decode of the stories prompts matches llama2.c", async () => {
  const t = await loadTokenizer(TOK512, 512);
  assert.equal(t.vocabSize, 512);
  assert.equal(t.bos, 1);
  assert.equal(t.eos, 2);
  assert.equal(t.maxTokenLength, 7);
  // The first four tokens run.c generates greedily from BOS are the same words.
  assert.deepEqual(t.encode("Once upon a time", { bos: true, eos: false }), [1, 403, 407, 261, 378]);
  assert.deepEqual(
    t.encode("Sam found a shiny stone", { bos: true, eos: true }),
    [1, 301, 314, 272, 277, 264, 261, 262, 415, 271, 422, 349, 289, 411, 2],
  );
  const text = "Hello world! ünïcödé 😀 中文\n\ttab";
  assert.equal(t.decode(t.encode(text, { bos: false, eos: false })), text);
});

test("Llama 2 tokenizer.bin: known sentencepiece ids", async () => {
  const t = await loadTokenizer(LLAMA_TOKENIZER, 32000);
  // Ids as Meta's sentencepiece model gives them (e.g. HF LlamaTokenizer).
  assert.deepEqual(t.encode("Once upon a time", { bos: true, eos: false }), [1, 9038, 2501, 263, 931]);
  assert.deepEqual(t.encode("Hello world", { bos: true, eos: true }), [1, 15043, 3186, 2]);
  // "▁" then the emoji's four byte-fallback tokens.
  assert.deepEqual(t.encode("😀", { bos: false, eos: false }), [29871, 243, 162, 155, 131]);
  assert.equal(t.decode([29871, 243, 162, 155, 131]), "😀");
});

test("loadTokenizer names the file and sizes when truncated, mismatched or missing", async () => {
  const truncated = join(dir, "tok-truncated.bin");
  await writeFile(truncated, (await readFile(TOK512)).subarray(0, 6000));
  await assert.rejects(loadTokenizer(truncated, 512), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.path, truncated);
    assert.equal(err.expected, 6001);
    assert.equal(err.found, 6000);
    assert.match(
      err.message,
      new RegExp(`^${truncated}: tokenizer ends inside token 487 of 512 .*\\(expected 6001 bytes, found 6000\\)$`),
    );
    return true;
  });
  // One token fewer than the file holds: 11 bytes left over.
  await assert.rejects(loadTokenizer(TOK512, 511), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.expected, 6216);
    assert.equal(err.found, 6227);
    assert.match(err.message, /tok512\.bin: tokenizer has 11 bytes after its 511 tokens/);
    return true;
  });
  // One token more than the file holds.
  await assert.rejects(loadTokenizer(TOK512, 513), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.expected, 6235);
    assert.equal(err.found, 6227);
    assert.match(err.message, /tokenizer ends inside token 512 of 513/);
    return true;
  });
  const missing = join(dir, "nope.bin");
  await assert.rejects(loadTokenizer(missing, 512), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.path, missing);
    assert.ok(err.message.startsWith(`${missing}: cannot read tokenizer: ENOENT`));
    return true;
  });
});
