import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "@tessera/core";
import { argmax, createRng, createSampler } from "../src/index.js";

/**
 * An independent xorshift* on two uint32 halves (no BigInt), to check
 * createRng step by step. 64-bit shifts and the 64x64 multiply's bits 32..63
 * are assembled from 16-bit limbs.
 */
function createRngHalves(hi0: number, lo0: number) {
  let hi = hi0 >>> 0;
  let lo = lo0 >>> 0;
  const shr = (h: number, l: number, n: number): [number, number] => [h >>> n, ((l >>> n) | (h << (32 - n))) >>> 0];
  const shl = (h: number, l: number, n: number): [number, number] => [
    ((h << n) | (l >>> (32 - n))) >>> 0,
    (l << n) >>> 0,
  ];
  // High 32 bits of the low 64 bits of (hi:lo) * (mh:ml).
  const mulHigh32 = (h: number, l: number, mh: number, ml: number): number => {
    const a = [l & 0xffff, l >>> 16, h & 0xffff, h >>> 16];
    const b = [ml & 0xffff, ml >>> 16, mh & 0xffff, mh >>> 16];
    const limbs = [0, 0, 0, 0];
    for (let i = 0; i < 4; i++) for (let j = 0; i + j < 4; j++) limbs[i + j]! += a[i]! * b[j]!;
    let carry = 0;
    for (let k = 0; k < 4; k++) {
      const v = limbs[k]! + carry;
      limbs[k] = v % 65536;
      carry = Math.floor(v / 65536);
    }
    return (limbs[2]! + limbs[3]! * 65536) >>> 0;
  };
  return () => {
    let s: [number, number];
    s = shr(hi, lo, 12);
    hi = (hi ^ s[0]) >>> 0;
    lo = (lo ^ s[1]) >>> 0;
    s = shl(hi, lo, 25);
    hi = (hi ^ s[0]) >>> 0;
    lo = (lo ^ s[1]) >>> 0;
    s = shr(hi, lo, 27);
    hi = (hi ^ s[0]) >>> 0;
    lo = (lo ^ s[1]) >>> 0;
    return mulHigh32(hi, lo, 0x2545f491, 0x4f6cdd1d);
  };
}

test("random_u32 matches run.c compiled with gcc (seed 42 and 2^64-1)", () => {
  // Printed by run.c's random_u32 (u32, then the state) compiled with gcc 12 on x86-64.
  const r = createRng(42);
  const expected: [number, bigint][] = [
    [1456360119, 1409286176n],
    [3359763283, 47299340976525346n],
    [3393612768, 142435135655313518n],
    [4054632243, 4637185482584944939n],
    [3283045847, 6045135835962859838n],
  ];
  for (const [u, state] of expected) {
    assert.equal(r.nextU32(), u);
    assert.equal(r.state, state);
  }
  const big = createRng(18446744073709551615n);
  assert.deepEqual([big.nextU32(), big.nextU32(), big.nextU32()], [4180462053, 2415166680, 879531507]);
  assert.equal(big.state, 5758697399176404478n);
});

test("random_u32 agrees with an independent 32-bit-halves xorshift* for 2000 steps", () => {
  for (const seed of [1n, 42n, 0x123456789abcdefn, 0xfedcba9876543210n]) {
    const r = createRng(seed);
    const ref = createRngHalves(Number(seed >> 32n), Number(seed & 0xffffffffn));
    for (let i = 0; i < 2000; i++) assert.equal(r.nextU32(), ref(), `seed ${seed} step ${i}`);
  }
});

test("random_f32 is (random_u32 >> 8) / 2^24", () => {
  const a = createRng(42);
  // 1456360119 >>> 8 = 5688906; 3359763283 >>> 8 = 13124075.
  assert.equal(a.nextF32(), 5688906 / 16777216);
  assert.equal(a.nextF32(), 13124075 / 16777216);
});

test("temperature 0 takes the first maximum and leaves the logits alone", () => {
  const s = createSampler({ vocabSize: 5, temperature: 0, topP: 0.9, seed: 0 });
  const logits = Float32Array.of(1, 3, -2, 3, 2);
  assert.equal(s.sample(logits), 1);
  assert.deepEqual([...logits], [1, 3, -2, 3, 2]);
  assert.equal(argmax(Float32Array.of(-5, -4, -4)), 1);
  assert.equal(s.rng.state, 0n); // greedy draws no coin
});

test("multinomial sampling walks the CDF with run.c's coins (hand-worked)", () => {
  // Equal logits: probabilities 1/4 each. Coins from seed 42: 0.339, 0.782, 0.790, 0.944, 0.764.
  const s = createSampler({ vocabSize: 4, temperature: 1, topP: 1, seed: 42 });
  const picks = Array.from({ length: 5 }, () => s.sample(new Float32Array(4)));
  assert.deepEqual(picks, [1, 3, 3, 3, 3]);
  // The logits are overwritten with the probabilities.
  const logits = new Float32Array(4);
  s.sample(logits);
  assert.deepEqual([...logits], [0.25, 0.25, 0.25, 0.25]);
});

test("top-p keeps the smallest nucleus over topp and samples inside it (hand-worked)", () => {
  // probs 0.1, 0.5, 0.2, 0.2; topp 0.6: cutoff (1-0.6)/3 = 0.133 drops index 0; sorted 1, 2, 3 (tie in
  // index order); cumulative 0.5, 0.7 > 0.6 -> nucleus {1, 2}, r = coin * 0.7.
  // coin 0.339 -> r 0.237 < 0.5 -> 1; coin 0.782 -> r 0.548 -> 2; coin 0.790 -> 2; 0.944 -> 2; 0.764 -> 2.
  const s = createSampler({ vocabSize: 4, temperature: 1, topP: 0.6, seed: 42 });
  const logits = () => Float32Array.from([0.1, 0.5, 0.2, 0.2], Math.log);
  assert.deepEqual(
    Array.from({ length: 5 }, () => s.sample(logits())),
    [1, 2, 2, 2, 2],
  );
  // Temperature divides the logits before the softmax: at 0.5 the probabilities become
  // 0.01, 0.25, 0.04, 0.04 over 0.34, and index 1 alone (0.735) exceeds topp 0.6.
  const t = createSampler({ vocabSize: 4, temperature: 0.5, topP: 0.6, seed: 42 });
  assert.deepEqual(
    Array.from({ length: 5 }, () => t.sample(logits())),
    [1, 1, 1, 1, 1],
  );
});

test("createSampler rejects bad options with the option's name", () => {
  const bad: [Partial<Parameters<typeof createSampler>[0]>, string][] = [
    [{ temperature: -0.1 }, "temperature"],
    [{ temperature: Number.NaN }, "temperature"],
    [{ topP: Number.NaN }, "topP"],
    [{ seed: -1 }, "seed"],
    [{ seed: 1.5 }, "seed"],
    [{ seed: 1n << 64n }, "seed"],
    [{ seed: 0 }, "seed"], // zero state with temperature > 0
    [{ vocabSize: 0 }, "vocabSize"],
  ];
  for (const [patch, option] of bad) {
    assert.throws(
      () => createSampler({ vocabSize: 4, temperature: 1, topP: 0.9, seed: 7, ...patch }),
      (err: unknown) => err instanceof ConfigError && err.option === option,
      option,
    );
  }
  const s = createSampler({ vocabSize: 4, temperature: 1, topP: 0.9, seed: 7 });
  assert.throws(() => s.sample(new Float32Array(3)), RangeError);
});

test("a temperature so small that logits / temperature overflow samples the argmax, and the generator still steps", () => {
  const tiny = createSampler({ vocabSize: 4, temperature: 1e-40, topP: 0.9, seed: 42n });
  const mult = createSampler({ vocabSize: 4, temperature: 1e-40, topP: 1, seed: 42n });
  for (const s of [tiny, mult]) {
    assert.equal(s.sample(new Float32Array([0.5, 2.5, -1, 2.4])), 1);
    assert.equal(s.sample(new Float32Array([-3, -2, -1, 7])), 3);
  }
  const reference = createSampler({ vocabSize: 4, temperature: 1, topP: 1, seed: 42n });
  reference.sample(new Float32Array(4));
  reference.sample(new Float32Array(4));
  assert.equal(tiny.rng.nextF32(), reference.rng.nextF32());
});

test("top-p below 1/n over near-uniform probabilities samples a token (run.c would index out of bounds)", () => {
  // A huge temperature flattens any logits to uniform: every probability
  // (1/512) is below run.c's cutoff (1 - top_p) / (n - 1) ≈ 1/511.
  const s = createSampler({ vocabSize: 512, temperature: 3.4e38, topP: 1.4e-45, seed: 4n });
  const logits = Float32Array.from({ length: 512 }, (_, i) => (i % 7) - 3);
  for (let k = 0; k < 20; k++) {
    const token = s.sample(logits.slice());
    assert.ok(Number.isInteger(token) && token >= 0 && token < 512, `token ${token}`);
  }
  // Uniform with a tiny top_p: the nucleus is the first candidate in index order.
  assert.equal(createSampler({ vocabSize: 8, temperature: 1, topP: 1e-9, seed: 3n }).sample(new Float32Array(8)), 0);
});
