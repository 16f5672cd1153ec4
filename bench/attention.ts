/**
 * Attention roofline (issue 3, item 6): the memory-node's decode attention
 * ({@link attendKvCache}: 1 query per sequence over a long KV cache, GQA)
 * against the machine's memory read bandwidth, measured in the same process.
 * The kernel as it was before it was rewritten for bandwidth is kept below as
 * `baselineAttendKvCache`, so the speedup is a ratio measured in the same run
 * and the two outputs are checked against each other.
 *
 * Run: `node --import tsx bench/attention.ts` (after `npx tsc -b packages/core`);
 * `npm run bench` runs it last, through {@link runAttentionBench}.
 * Environment: BENCH_QUICK=1 uses 8 x 4K positions instead of 8 x 32K.
 */
import {
  attendKvCache,
  createAttentionScratch,
  getWasmAttention,
  type AttentionDims,
  type AttentionScratch,
  type CausalQueries,
} from "@tessera/core";

function grow(a: Float64Array, n: number): Float64Array {
  return a.length >= n ? a : new Float64Array(Math.max(n, a.length * 2));
}

// Baseline hot-loop helpers (the kernel before the rewrite). Two heads of a GQA group per pass share each K/V load
// and give the CPU two independent add chains: about 2x over one head at a
// time in V8 (measured on decode, 4096 positions, head_dim 64).

/** s[sOff] = qg[q0..] . k[kOff..], s[sOff + 1] = qg[q0 + n..] . k[kOff..] (two adjacent heads). */
function scoresPair(
  qg: Float64Array,
  q0: number,
  k: Float32Array,
  kOff: number,
  n: number,
  s: Float64Array,
  sOff: number,
): void {
  const q1 = q0 + n;
  let a0 = 0;
  let a1 = 0;
  let b0 = 0;
  let b1 = 0;
  let d = 0;
  for (; d + 1 < n; d += 2) {
    const x = k[kOff + d]!;
    const y = k[kOff + d + 1]!;
    a0 += qg[q0 + d]! * x;
    a1 += qg[q0 + d + 1]! * y;
    b0 += qg[q1 + d]! * x;
    b1 += qg[q1 + d + 1]! * y;
  }
  if (d < n) {
    const x = k[kOff + d]!;
    a0 += qg[q0 + d]! * x;
    b0 += qg[q1 + d]! * x;
  }
  s[sOff] = a0 + a1;
  s[sOff + 1] = b0 + b1;
}

/** qg[q0..q0+n) . k[kOff..kOff+n) */
function dot(qg: Float64Array, q0: number, k: Float32Array, kOff: number, n: number): number {
  let a0 = 0;
  let a1 = 0;
  let d = 0;
  for (; d + 1 < n; d += 2) {
    a0 += qg[q0 + d]! * k[kOff + d]!;
    a1 += qg[q0 + d + 1]! * k[kOff + d + 1]!;
  }
  if (d < n) a0 += qg[q0 + d]! * k[kOff + d]!;
  return a0 + a1;
}

/** acc[a0..] += w0 * v[vOff..]; acc[a0 + n..] += w1 * v[vOff..] (two adjacent heads). */
function axpyPair(
  w0: number,
  w1: number,
  v: Float32Array,
  vOff: number,
  acc: Float64Array,
  a0: number,
  n: number,
): void {
  const a1 = a0 + n;
  for (let d = 0; d < n; d++) {
    const x = v[vOff + d]!;
    acc[a0 + d]! += w0 * x;
    acc[a1 + d]! += w1 * x;
  }
}

/** acc[a0..a0+n) += w * v[vOff..vOff+n) */
function axpy(w: number, v: Float32Array, vOff: number, acc: Float64Array, a0: number, n: number): void {
  for (let d = 0; d < n; d++) acc[a0 + d]! += w * v[vOff + d]!;
}

/** Scores of the `group` heads whose queries are at qg[q0..] against one K row, into s[sOff..]. */
function groupScores(
  qg: Float64Array,
  q0: number,
  group: number,
  k: Float32Array,
  kOff: number,
  headDim: number,
  s: Float64Array,
  sOff: number,
): void {
  let j = 0;
  for (; j + 1 < group; j += 2) scoresPair(qg, q0 + j * headDim, k, kOff, headDim, s, sOff + j);
  if (j < group) s[sOff + j] = dot(qg, q0 + j * headDim, k, kOff, headDim);
}

/** acc[a0 + j * headDim..] += s[sOff + j] * v[vOff..] for the `group` heads. */
function groupAxpy(
  s: Float64Array,
  sOff: number,
  group: number,
  v: Float32Array,
  vOff: number,
  acc: Float64Array,
  a0: number,
  headDim: number,
): void {
  let j = 0;
  for (; j + 1 < group; j += 2) axpyPair(s[sOff + j]!, s[sOff + j + 1]!, v, vOff, acc, a0 + j * headDim, headDim);
  if (j < group) axpy(s[sOff + j]!, v, vOff, acc, a0 + j * headDim, headDim);
}

/** The kernel before the rewrite: two passes per KV-head group, f64 scores over the whole cache. */
function baselineAttendKvCache(
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
  scratch: AttentionScratch,
): void {
  const { nHeads, nKvHeads, headDim } = dims;
  const { q, qRow, nQueries, startPos } = queries;
  const group = nHeads / nKvHeads;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const end = startPos + nQueries;
  if (k.length < end * kvRow || v.length < end * kvRow) {
    throw new RangeError(`K/V buffers hold ${Math.floor(Math.min(k.length, v.length) / kvRow)} positions, need ${end}`);
  }
  if (q.length < (qRow + nQueries) * qStride)
    throw new RangeError(`q has too few rows for ${nQueries} queries at row ${qRow}`);
  if (out.length < (outRow + nQueries) * qStride)
    throw new RangeError(`out has too few rows for ${nQueries} queries at row ${outRow}`);
  const scale = 1 / Math.sqrt(headDim);
  scratch.qGroup = grow(scratch.qGroup, group * headDim);
  scratch.acc = grow(scratch.acc, group * headDim);
  scratch.scores = grow(scratch.scores, group * end);
  const qg = scratch.qGroup;
  const acc = scratch.acc;
  const s = scratch.scores;
  const maxes = new Float64Array(group);
  const sums = new Float64Array(group);

  for (let i = 0; i < nQueries; i++) {
    const n = startPos + i + 1; // positions [0, startPos + i]
    const qBase = (qRow + i) * qStride;
    const oBase = (outRow + i) * qStride;
    for (let g = 0; g < nKvHeads; g++) {
      const h0 = g * group;
      // Pre-scaled f64 copy of the group's queries: contiguous, no scale in the loop.
      for (let j = 0, src = qBase + h0 * headDim; j < group * headDim; j++) qg[j] = q[src + j]! * scale;
      maxes.fill(-Infinity);
      const kHead = g * headDim;
      // Pass 1: scores s[t * group + j], and the max of each head.
      for (let t = 0; t < n; t++) groupScores(qg, 0, group, k, t * kvRow + kHead, headDim, s, t * group);
      for (let t = 0; t < n; t++) {
        const sRow = t * group;
        for (let j = 0; j < group; j++) if (s[sRow + j]! > maxes[j]!) maxes[j] = s[sRow + j]!;
      }
      // Softmax weights, unnormalised (normalised once at the end).
      sums.fill(0);
      for (let t = 0; t < n; t++) {
        const sRow = t * group;
        for (let j = 0; j < group; j++) {
          const w = Math.exp(s[sRow + j]! - maxes[j]!);
          s[sRow + j] = w;
          sums[j]! += w;
        }
      }
      // Pass 2: weighted sum of V rows.
      acc.fill(0, 0, group * headDim);
      for (let t = 0; t < n; t++) groupAxpy(s, t * group, group, v, t * kvRow + kHead, acc, 0, headDim);
      for (let j = 0; j < group; j++) {
        const inv = 1 / sums[j]!;
        const aOff = j * headDim;
        const oOff = oBase + (h0 + j) * headDim;
        for (let d = 0; d < headDim; d++) out[oOff + d] = acc[aOff + d]! * inv;
      }
    }
  }
}

// ---------------------------------------------------------------------------

const quick = process.env["BENCH_QUICK"] === "1";
const DIMS: AttentionDims = { nHeads: 32, nKvHeads: 8, headDim: 64 };
const SEQS = 8;
const POSITIONS = quick ? 4096 : 32768;
const REPS = 3;

/** Best of `reps` runs of `fn`, in seconds. */
function bestOf(reps: number, fn: () => void): number {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

/** Uniform [-amp, amp) from a 32-bit LCG: fills a GiB in about a second, unlike Math.random. */
function fillRandom(a: Float32Array, seed: number, amp: number): void {
  let x = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    a[i] = (x / 2 ** 31 - 1) * amp;
  }
}

/**
 * Single-thread memory read bandwidth, bytes/s: the best of (a) memcmp of two
 * equal 256 MiB buffers (`Buffer.compare`, native code: the hardware's
 * figure) and (b) summing a 256 MiB Float64Array with 4 independent JS add
 * chains (what a JS loop can reach). The attention kernel is judged against
 * the higher. Buffers are 8x the L3 so caches do not flatter the figure.
 */
function measureReadBandwidth(): { bytesPerSecond: number; memcmp: number; jsSum: number } {
  const bytes = 256 * 2 ** 20;
  const a = Buffer.alloc(bytes, 1);
  const b = Buffer.alloc(bytes, 1);
  let sink = 0;
  const tCmp = bestOf(5, () => (sink += Buffer.compare(a, b)));
  const f = new Float64Array(a.buffer, a.byteOffset, bytes / 8);
  const tSum = bestOf(5, () => {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let i = 0; i < f.length; i += 4) {
      s0 += f[i]!;
      s1 += f[i + 1]!;
      s2 += f[i + 2]!;
      s3 += f[i + 3]!;
    }
    sink += s0 + s1 + s2 + s3;
  });
  if (Number.isNaN(sink)) throw new Error("unreachable");
  const memcmp = (2 * bytes) / tCmp;
  const jsSum = bytes / tSum;
  return { bytesPerSecond: Math.max(memcmp, jsSum), memcmp, jsSum };
}

type Kernel = (
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
  scratch: AttentionScratch,
) => void;

/**
 * Not a kernel: only the wasm path's copies (each K, then V, block of 128
 * positions into wasm memory), to show what they cost of its step time.
 */
const copyOnly: Kernel = (dims, queries, k, v) => {
  const w = getWasmAttention();
  if (!w) return;
  const kvRow = dims.nKvHeads * dims.headDim;
  const n = queries.startPos + queries.nQueries;
  const buf = w.reserve(dims.nHeads, dims.nKvHeads, dims.headDim, 128);
  for (let b = 0; b < n; b += 128) {
    const nb = Math.min(128, n - b);
    buf.f32.set(k.subarray(b * kvRow, (b + nb) * kvRow), buf.kv);
    buf.f32.set(v.subarray(b * kvRow, (b + nb) * kvRow), buf.kv);
  }
};

/** Prints the attention roofline: bandwidth, then each kernel's KV GB/s, % of bandwidth and speedup. */
export function runAttentionBench(): void {
  const gb = (x: number) => (x / 1e9).toFixed(2);
  const bw = measureReadBandwidth();
  console.log(
    `memory read bandwidth (1 thread): ${gb(bw.bytesPerSecond)} GB/s (memcmp ${gb(bw.memcmp)}, JS f64 sum ${gb(bw.jsSum)})`,
  );

  const { nHeads, nKvHeads, headDim } = DIMS;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const ks: Float32Array[] = [];
  const vs: Float32Array[] = [];
  for (let i = 0; i < SEQS; i++) {
    const k = new Float32Array(POSITIONS * kvRow);
    const v = new Float32Array(POSITIONS * kvRow);
    fillRandom(k, 2 * i + 1, 1);
    fillRandom(v, 2 * i + 2, 1);
    ks.push(k);
    vs.push(v);
  }
  const q = new Float32Array(SEQS * qStride);
  fillRandom(q, 99, 2);
  const kvBytes = SEQS * POSITIONS * kvRow * 4 * 2;
  console.log(
    `decode attention: ${SEQS} sequences x ${POSITIONS} positions, ${nHeads} heads, ${nKvHeads} KV heads, head_dim ${headDim} (${(kvBytes / 2 ** 30).toFixed(2)} GiB of KV per step)`,
  );

  /** One decode step: each sequence's query (its last position) over its whole cache. */
  const step = (kernel: Kernel, out: Float32Array, scratch: AttentionScratch) => {
    for (let i = 0; i < SEQS; i++) {
      kernel(DIMS, { q, qRow: i, nQueries: 1, startPos: POSITIONS - 1 }, ks[i]!, vs[i]!, out, i, scratch);
    }
  };
  const results: { name: string; seconds: number; out: Float32Array }[] = [];
  for (const [name, kernel] of [
    ["baseline (f64, per-head-group passes)", baselineAttendKvCache],
    ["attendKvCache, kernel js", (...a) => attendKvCache(...a, "js")],
    ["attendKvCache, kernel wasm (default)", (...a) => attendKvCache(...a, "wasm")],
    ["  of which: K/V block copies into wasm", copyOnly],
  ] as [string, Kernel][]) {
    const out = new Float32Array(SEQS * qStride);
    const scratch = createAttentionScratch();
    const seconds = bestOf(REPS, () => step(kernel, out, scratch));
    results.push({ name, seconds, out });
  }
  const base = results[0]!;
  for (const r of results) {
    const rate = kvBytes / r.seconds;
    console.log(
      `  ${r.name.padEnd(40)} ${(r.seconds * 1000).toFixed(0).padStart(6)} ms/step  KV ${gb(rate)} GB/s = ${((100 * rate) / bw.bytesPerSecond).toFixed(0)}% of bandwidth (target 50%)  speedup ${(base.seconds / r.seconds).toFixed(2)}x`,
    );
  }
  let maxDiff = 0;
  for (const r of results.filter((x) => x.name !== "  of which: K/V block copies into wasm"))
    for (let i = 0; i < base.out.length; i++) maxDiff = Math.max(maxDiff, Math.abs(r.out[i]! - base.out[i]!));
  console.log(`  max |difference| from the baseline's outputs: ${maxDiff.toExponential(1)}`);
  if (!(maxDiff <= 1e-5)) throw new Error(`kernels disagree by ${maxDiff}`);
}

// Run directly (`node --import tsx bench/attention.ts`), or imported by bench/main.ts.
if (import.meta.url === `file://${process.argv[1]}`) runAttentionBench();
