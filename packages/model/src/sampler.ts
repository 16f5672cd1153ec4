/**
 * Token sampling exactly as llama2.c `run.c`'s `Sampler`: greedy argmax at
 * temperature 0; otherwise temperature, float32 softmax, one coin from a
 * xorshift* generator, then multinomial sampling (top_p <= 0 or >= 1) or
 * nucleus (top-p) sampling (Holtzman et al. 2019, "The Curious Case of Neural
 * Text Degeneration"). A seeded run draws the same tokens as run.c given the
 * same logits.
 *
 * run.c works in C `float`; values it rounds to float32 are rounded here with
 * `Math.fround` (a double result of +, -, *, / rounded once to float32 equals
 * the float32 operation). `expf` is `Math.exp` rounded to float32, which can
 * differ from glibc's `expf` in the last bit on rare inputs. One departure:
 * a temperature so small that logits / temperature overflow (run.c goes on
 * with inf and NaN) samples the argmax.
 */
import { ConfigError } from "@tessera/core";

const f = Math.fround;
const MASK64 = (1n << 64n) - 1n;
const XORSHIFT_STAR_MULTIPLIER = 0x2545f4914f6cdd1dn;

/**
 * The generator state of run.c: a uint64 stepped by xorshift* (Marsaglia
 * 2003; Vigna 2016). Kept as a BigInt: one step per sampled token is cheap.
 */
export interface Rng {
  /** Current 64-bit state. */
  readonly state: bigint;
  /** run.c `random_u32`: one xorshift step, then the high 32 bits of state * 0x2545F4914F6CDD1D. */
  nextU32(): number;
  /** run.c `random_f32`: (random_u32 >> 8) / 2^24, a float32 in [0, 1). */
  nextF32(): number;
}

/**
 * A run.c-compatible generator seeded with `seed` (taken modulo 2^64).
 * A zero state stays zero forever (run.c replaces seed 0 by the time).
 */
export function createRng(seed: number | bigint): Rng {
  let state = BigInt.asUintN(64, BigInt(seed));
  const nextU32 = (): number => {
    state ^= state >> 12n;
    state = (state ^ (state << 25n)) & MASK64;
    state ^= state >> 27n;
    return Number(((state * XORSHIFT_STAR_MULTIPLIER) & MASK64) >> 32n);
  };
  return {
    get state() {
      return state;
    },
    nextU32,
    nextF32: () => (nextU32() >>> 8) / 16777216,
  };
}

/** Options of {@link createSampler}. */
export interface SamplerOptions {
  /** Logits per step. */
  vocabSize: number;
  /** 0 = greedy (argmax); otherwise logits are divided by it before softmax. Rounded to float32 like run.c's `float`. */
  temperature: number;
  /** Nucleus mass in (0, 1); <= 0 or >= 1 samples from the whole distribution. Rounded to float32. */
  topP: number;
  /**
   * Initial uint64 generator state (run.c's `rng_seed`). Must be non-zero when
   * temperature > 0: xorshift keeps a zero state at zero.
   */
  seed: number | bigint;
}

/** One sequence's sampler; it owns the generator state, so use one per sequence. */
export interface Sampler {
  /**
   * Picks the next token from `logits` ([vocabSize] f32), as run.c `sample()`.
   * When temperature > 0 it overwrites `logits` in place with the
   * probabilities (as run.c does); copy them first if they are still needed.
   * @throws RangeError when `logits.length` is not vocabSize.
   */
  sample(logits: Float32Array): number;
  /** The generator (state advances by one step per non-greedy `sample`). */
  readonly rng: Rng;
}

/** run.c `sample_argmax`: index of the first maximum. */
export function argmax(values: Float32Array): number {
  let best = 0;
  let max = values[0] ?? -Infinity;
  for (let i = 1; i < values.length; i++) {
    const v = values[i]!;
    if (v > max) {
      max = v;
      best = i;
    }
  }
  return best;
}

/** run.c `softmax` in place, with its float32 roundings. */
export function softmaxF32InPlace(x: Float32Array, size = x.length): void {
  let max = x[0]!;
  for (let i = 1; i < size; i++) if (x[i]! > max) max = x[i]!;
  let sum = 0;
  for (let i = 0; i < size; i++) {
    const e = f(Math.exp(f(x[i]! - max)));
    x[i] = e;
    sum = f(sum + e);
  }
  for (let i = 0; i < size; i++) x[i] = x[i]! / sum;
}

/** run.c `sample_mult`: walk the float32 CDF until it passes `coin`. */
function sampleMult(probs: Float32Array, coin: number): number {
  let cdf = 0;
  for (let i = 0; i < probs.length; i++) {
    cdf = f(cdf + probs[i]!);
    if (coin < cdf) return i;
  }
  return probs.length - 1;
}

/**
 * run.c `sample_topp`. Candidates below (1 - topp) / (n - 1) are dropped
 * first (they cannot be in the nucleus), the rest sorted by probability
 * descending (all of them when none reaches the cutoff, where run.c
 * would index out of bounds). The sort here is stable (ties keep index order); run.c uses
 * glibc `qsort`, which may order exactly equal probabilities differently, so
 * a tie straddling the cut or the coin can pick a different token.
 */
function sampleTopP(probs: Float32Array, topp: number, coin: number, index: Int32Array): number {
  const n = probs.length;
  const cutoff = f(f(1 - topp) / (n - 1));
  let n0 = 0;
  for (let i = 0; i < n; i++) {
    if (probs[i]! >= cutoff) index[n0++] = i;
  }
  // Nothing reaches the cutoff: near-uniform probabilities with top_p
  // below 1/n (e.g. a huge temperature and a tiny top_p). run.c would read
  // index[-1] here; every token is a candidate instead.
  if (n0 === 0) for (; n0 < n; n0++) index[n0] = n0;
  const candidates = index.subarray(0, n0);
  // TypedArray#sort is stable (ES2019+); ties keep ascending index order.
  candidates.sort((a, b) => probs[b]! - probs[a]!);
  let cumulative = 0;
  let last = n0 - 1;
  for (let i = 0; i < n0; i++) {
    cumulative = f(cumulative + probs[candidates[i]!]!);
    if (cumulative > topp) {
      last = i;
      break;
    }
  }
  const r = f(coin * cumulative);
  let cdf = 0;
  for (let i = 0; i <= last; i++) {
    cdf = f(cdf + probs[candidates[i]!]!);
    if (r < cdf) return candidates[i]!;
  }
  return candidates[last]!;
}

/** Largest finite float32. */
const F32_MAX = 3.4028234663852886e38;

/**
 * A sampler reproducing llama2.c run.c's `sample()` bit for bit (see the
 * module comment for the float32 caveats and the tie order of top-p).
 * @throws ConfigError naming the option when vocabSize, temperature, topP or
 *   seed is invalid.
 */
export function createSampler(options: SamplerOptions): Sampler {
  const { vocabSize } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < 1)
    throw new ConfigError("vocabSize", `must be a positive integer, got ${vocabSize}`);
  if (!(options.temperature >= 0) || !Number.isFinite(options.temperature)) {
    throw new ConfigError("temperature", `must be a finite number >= 0, got ${options.temperature}`);
  }
  if (Number.isNaN(options.topP)) throw new ConfigError("topP", "must be a number, got NaN");
  const seed =
    typeof options.seed === "bigint" ? options.seed : Number.isSafeInteger(options.seed) ? BigInt(options.seed) : -1n;
  if (seed < 0n || seed > MASK64) throw new ConfigError("seed", `must be an integer in [0, 2^64), got ${options.seed}`);
  const temperature = f(options.temperature);
  const topP = f(options.topP);
  if (temperature > 0 && seed === 0n) {
    throw new ConfigError("seed", "must be non-zero when temperature > 0 (a zero xorshift state never changes)");
  }
  const rng = createRng(seed);
  const index = new Int32Array(vocabSize);
  return {
    rng,
    sample(logits: Float32Array): number {
      if (logits.length !== vocabSize) throw new RangeError(`expected ${vocabSize} logits, got ${logits.length}`);
      if (temperature === 0) return argmax(logits);
      // A temperature so small that logits / temperature overflow float32
      // (run.c would go on with inf and NaN): the limit of softmax as the
      // temperature goes to 0 is the argmax. The coin is still drawn, so
      // the generator steps as on any other sampled token.
      let maxAbs = 0;
      for (let i = 0; i < vocabSize; i++) maxAbs = Math.max(maxAbs, Math.abs(logits[i]!));
      if (maxAbs / temperature > F32_MAX) {
        rng.nextF32();
        return argmax(logits);
      }
      for (let i = 0; i < vocabSize; i++) logits[i] = logits[i]! / temperature;
      softmaxF32InPlace(logits);
      const coin = rng.nextF32();
      if (topP <= 0 || topP >= 1) return sampleMult(logits, coin);
      return sampleTopP(logits, topP, coin, index);
    },
  };
}
