/**
 * The O(n log n) BPE merge loop (src/bpe-merge.ts) against the O(n^2) one it
 * replaced (kept below as `referenceEncode`, the encode() of tokenizer.ts
 * before, itself checked against llama2.c run.c by tokenizer.test.ts): the
 * same ids for random and adversarial texts on the bundled vocabularies and
 * on random vocabularies full of tied scores.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createTokenizer, loadTokenizer, type EncodeOptions, type Tokenizer } from "../src/index.js";

const SHARED = fileURLToPath(new URL("../../../../shared/", import.meta.url));
const TOK512 = join(SHARED, "models", "tok512.bin");
const LLAMA_TOKENIZER = join(SHARED, "models", "tokenizer.bin");
const PROMPTS = join(SHARED, "prompts", "stories.jsonl");

interface ReferenceTables {
  pieces: string[];
  ids: Map<string, number>;
  byteToken: Int32Array;
}
const tables = new WeakMap<Tokenizer, ReferenceTables>();

/** Piece → id (first id wins) and byte → `<0xXX>` token, as tokenizer.ts builds them. */
function referenceTables(t: Tokenizer): ReferenceTables {
  let r = tables.get(t);
  if (r) return r;
  r = { pieces: [], ids: new Map(), byteToken: new Int32Array(256).fill(-1) };
  for (let id = 0; id < t.vocabSize; id++) {
    const p = t.piece(id);
    r.pieces.push(p);
    if (!r.ids.has(p)) r.ids.set(p, id);
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p);
    if (m) {
      const b = parseInt(m[1]!, 16);
      if (r.byteToken[b] === -1 && p === `<0x${m[1]!.toUpperCase()}>`) r.byteToken[b] = id;
    }
  }
  tables.set(t, r);
  return r;
}

/**
 * The reference: tokenizer.ts's encode() before bpe-merge.ts, a port of
 * run.c's encode() that rescans every pair after each merge (strict >, so
 * the leftmost pair wins ties; -1e10 is run.c's floor).
 */
function referenceEncode(t: Tokenizer, text: string, opts: EncodeOptions): number[] {
  const { pieces, ids, byteToken } = referenceTables(t);
  const bytes = Buffer.from(text, "utf8");
  const tokens: number[] = [];
  if (opts.bos) tokens.push(t.bos);
  if (bytes.length > 0) tokens.push(ids.get(" ")!);
  let i = 0;
  while (i < bytes.length) {
    let end = i + 1;
    while (end < bytes.length && (bytes[end]! & 0xc0) === 0x80 && end - i < 4) end++;
    const id = ids.get(bytes.toString("latin1", i, end));
    if (id !== undefined) tokens.push(id);
    else for (let k = i; k < end; k++) tokens.push(byteToken[bytes[k]!]!);
    i = end;
  }
  const pairId: number[] = [];
  const pairScore: number[] = [];
  const lookupPair = (k: number): void => {
    const id = ids.get(pieces[tokens[k]!]! + pieces[tokens[k + 1]!]!);
    pairId[k] = id ?? -1;
    pairScore[k] = id === undefined ? -Infinity : t.score(id);
  };
  for (let k = 0; k + 1 < tokens.length; k++) lookupPair(k);
  for (;;) {
    let bestScore = -1e10;
    let bestIdx = -1;
    for (let k = 0; k < pairScore.length; k++) {
      if (pairScore[k]! > bestScore) {
        bestScore = pairScore[k]!;
        bestIdx = k;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, pairId[bestIdx]!);
    pairId.splice(bestIdx, 1);
    pairScore.splice(bestIdx, 1);
    if (bestIdx > 0) lookupPair(bestIdx - 1);
    if (bestIdx + 1 < tokens.length) lookupPair(bestIdx);
  }
  if (opts.eos) tokens.push(t.eos);
  return tokens;
}

/** A small deterministic PRNG (mulberry32), so failures reproduce. */
function createRandom(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return Math.floor((((x ^ (x >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const pick = <T>(rand: (n: number) => number, xs: readonly T[]): T => xs[rand(xs.length)]!;

/** Texts of `n` characters drawn from `alphabet`. */
function randomText(rand: (n: number) => number, alphabet: readonly string[], n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += pick(rand, alphabet);
  return s;
}

/** Byte tokens at 3 + byte, as llama2.c's vocabularies. */
function withByteTokens(pieces: string[], scores: number[]): void {
  for (let b = 0; b < 256; b++) {
    pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    scores.push(0);
  }
}

/**
 * A random vocabulary over `alphabet` (plus " "): pieces of 2..6 characters
 * drawn from the texts' own alphabet, scores from a handful of values so
 * that many merges tie and the leftmost rule decides.
 */
function randomTokenizer(rand: (n: number) => number, alphabet: readonly string[], size: number): Tokenizer {
  const pieces = ["<unk>", "\n<s>\n", "\n</s>\n"];
  const scores = [0, 0, 0];
  withByteTokens(pieces, scores);
  const letters = [" ", ...alphabet];
  const seen = new Set(pieces);
  for (const c of letters) {
    const p = Buffer.from(c, "utf8").toString("latin1");
    if (!seen.has(p)) {
      seen.add(p);
      pieces.push(p);
      scores.push(0);
    }
  }
  const tiedScores = [-1, -2, -3, -1.5, 1e-45, -1e10, -1e11, NaN];
  // Bounded tries: a one-letter alphabet has few distinct pieces.
  for (let tries = 0; pieces.length < size && tries < 20 * size; tries++) {
    const p = Buffer.from(randomText(rand, letters, 2 + rand(5)), "utf8").toString("latin1");
    if (seen.has(p)) continue;
    seen.add(p);
    pieces.push(p);
    scores.push(rand(4) === 0 ? -rand(1000) / 7 : pick(rand, tiedScores));
  }
  return createTokenizer(pieces, scores);
}

function assertSameIds(t: Tokenizer, text: string, what: string): void {
  for (const opts of [
    { bos: true, eos: false },
    { bos: false, eos: true },
  ]) {
    const want = referenceEncode(t, text, opts);
    const got = t.encode(text, opts);
    if (got.length !== want.length || got.some((id, i) => id !== want[i])) {
      const at = got.findIndex((id, i) => id !== want[i]);
      assert.fail(`${what} (${text.length} chars, bos ${opts.bos}): ids differ from token ${at}`);
    }
  }
}

/** Every character U+0000..U+00FF once (all bytes, and their UTF-8 pairs). */
const ALL_LATIN1 = Array.from({ length: 256 }, (_, b) => String.fromCharCode(b)).join("");

/** Adversarial texts for a vocabulary whose prompts are `prompts`. */
function adversarialTexts(prompts: readonly string[], rand: (n: number) => number): [string, string][] {
  const words = prompts.join(" ").split(/\s+/);
  const story = Array.from({ length: 400 }, () => pick(rand, words)).join(" ");
  const unicode = Array.from({ length: 400 }, () => String.fromCodePoint(rand(0x11000))).join("");
  return [
    ["empty", ""],
    ["one space", " "],
    ["all latin1 characters", ALL_LATIN1],
    ["all latin1 characters, reversed and repeated", [...ALL_LATIN1].reverse().join("").repeat(2)],
    ["repeated a", "a".repeat(1500)],
    ["repeated spaces", " ".repeat(1000)],
    ["repeated newlines", "\n".repeat(800)],
    ["repeated ab", "ab".repeat(700)],
    ["repeated word", "the ".repeat(400)],
    ["repeated aab", "aab".repeat(500)],
    ["random unicode (lone surrogates, astral)", unicode],
    ["random story of the prompts' words", story],
    ["the prompts, one text", prompts.join("\n")],
    ["4 KB of stories", story.repeat(Math.ceil(4096 / story.length)).slice(0, 4096)],
  ];
}

async function bundledPrompts(): Promise<string[]> {
  const lines = (await readFile(PROMPTS, "utf8")).split("\n").filter((l) => l.trim() !== "");
  return lines.map((l) => (JSON.parse(l) as { prompt: string }).prompt);
}

test("encode gives the reference's ids on the bundled vocabularies (prompts, adversarial texts)", async () => {
  const prompts = await bundledPrompts();
  const rand = createRandom(13);
  for (const [file, size] of [
    [TOK512, 512],
    [LLAMA_TOKENIZER, 32000],
  ] as const) {
    const t = await loadTokenizer(file, size);
    for (const p of prompts) assertSameIds(t, p, `${file}: prompt ${JSON.stringify(p)}`);
    for (const [what, text] of adversarialTexts(prompts, rand)) assertSameIds(t, text, `${file}: ${what}`);
  }
});

test("encode gives the reference's ids on random vocabularies with tied scores", () => {
  const rand = createRandom(2026);
  const alphabets = [["a"], ["a", "b"], ["a", "b", "c"], ["x", "y", " ", "é"], ["a", "b", "\u0000", "€", "😀"]];
  for (let round = 0; round < 60; round++) {
    const alphabet = pick(rand, alphabets);
    const t = randomTokenizer(rand, alphabet, 280 + rand(200));
    for (let k = 0; k < 6; k++) {
      const n = pick(rand, [1, 2, 3, 7, 40, 300, 800]);
      assertSameIds(t, randomText(rand, [...alphabet, " "], n), `round ${round}, alphabet ${alphabet.join("")}`);
    }
    assertSameIds(t, pick(rand, alphabet).repeat(500), `round ${round}: one repeated character`);
  }
});

test("a 1 MB prompt encodes and decodes back to itself", async () => {
  // Speed is shown by bench/tokenizer.ts (16 KB to 1 MB against the old
  // rescan), not timed here; run.c's rescan needs minutes for this text.
  const t = await loadTokenizer(TOK512, 512);
  const story = (await bundledPrompts()).join(" ");
  const text = story.repeat(Math.ceil((1 << 20) / story.length)).slice(0, 1 << 20);
  const ids = t.encode(text, { bos: true, eos: false });
  assert.ok(ids.length > 1000);
  assert.equal(t.decode(ids.slice(1)), text);
});
