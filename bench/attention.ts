/**
 * Attention roofline (issue 3, item 6), both attention nodes:
 *
 * - memory-node: decode attention (1 query per sequence over a long KV
 *   cache, GQA) with the KV cache in wasm memory, as the memory-node holds
 *   it ({@link attendKvCacheInHeap}), against the machine's one-thread
 *   memory read bandwidth measured in the same run (bench/bandwidth.ts);
 * - storage-node: one decode step through a real storage-node (in process,
 *   over loopback gRPC) over a cache 4x its read buffer, with the files'
 *   pages dropped from the page cache first, against the disk's sequential
 *   read bandwidth measured the same way (a fresh file, pages dropped, read
 *   in buffer-sized chunks).
 *
 * The kernel as it was in issue 2 is kept below as `baselineAttendKvCache`
 * (and, for the storage-node, its JS online kernel, `attentionKernel:
 * "js"`), so each speedup is a ratio measured in the same run; outputs are
 * checked against each other.
 *
 * Run: `node --import tsx bench/attention.ts` (after `npx tsc -b services/storage-node`);
 * `npm run bench` runs it last, through {@link runAttentionBench}.
 * Environment: BENCH_QUICK=1 uses 8 x 4K positions (memory-node) and a
 * 64 MiB cache (storage-node) instead of 8 x 32K and 256 MiB.
 * Page cache: pages are dropped with `dd iflag=nocache count=0`
 * (posix_fadvise DONTNEED on the whole file, GNU coreutils), checked with
 * `fincore` where it exists; without dd the disk figures say "(page cache)".
 */
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { f32Tensor, tensorF32 } from "@tessera/core";
import { bestOf, dropFilePages, measureDiskRead } from "@tessera/profiling";
import {
  attendKvCache,
  attendKvCacheInHeap,
  createAttentionScratch,
  createAttentionWorkers,
  createWasmAttention,
  createWasmHeap,
  type AttentionDims,
  type AttentionScratch,
  type CausalQueries,
  checkKvCacheCall,
} from "@tessera/attention";
import { Attention, createClient } from "@tessera/proto";
import {
  blockCrc,
  createStorageNode,
  layerFileName,
  sequenceDirName,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  type Manifest,
} from "@tessera/storage-node";
import { openAttend } from "@tessera/testing";
import { measureReadBandwidth, type ReadBandwidth } from "./bandwidth.js";

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
  checkKvCacheCall(dims, queries, k, v, out, outRow);
  const { nHeads, nKvHeads, headDim } = dims;
  const { q, qRow, nQueries, startPos } = queries;
  const group = nHeads / nKvHeads;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const end = startPos + nQueries;
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
const REPS = 5;
const gb = (x: number) => (x / 1e9).toFixed(2);
const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

/** Uniform [-amp, amp) from a 32-bit LCG: fills a GiB in about a second, unlike Math.random. */
function fillRandom(a: Float32Array, seed: number, amp: number): void {
  let x = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    a[i] = (x / 2 ** 31 - 1) * amp;
  }
}

/** Median of the samples. */
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
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
 * Memory-node decode attention: prints each kernel's ms/step, KV GB/s,
 * share of the bandwidth (one thread's for one-thread kernels, all cores'
 * for the threaded one) and speedup over the issue-2 kernel.
 */
async function memoryNodeBench(bw: ReadBandwidth): Promise<void> {
  const { nHeads, nKvHeads, headDim } = DIMS;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const kvBytes = SEQS * POSITIONS * kvRow * 4 * 2;
  console.log(
    `memory-node decode attention: ${SEQS} sequences x ${POSITIONS} positions, ${nHeads} heads, ${nKvHeads} KV heads, head_dim ${headDim} (${(kvBytes / 2 ** 30).toFixed(2)} GiB of KV read per step)`,
  );
  // The KV cache in a wasm heap, as the memory-node allocates it; the other
  // kernels read the same rows through views of it.
  const heap = createWasmHeap();
  if (!heap) throw new Error("WebAssembly SIMD is unavailable on this Node");
  const wasm = createWasmAttention(heap, DIMS);
  wasm.reserve(1);
  const threads = availableParallelism();
  const pool = createAttentionWorkers(heap, threads);
  const ptrs: [number, number][] = [];
  for (let i = 0; i < SEQS; i++) {
    const k = heap.alloc(4 * POSITIONS * kvRow);
    const v = heap.alloc(4 * POSITIONS * kvRow);
    if (k === undefined || v === undefined) throw new Error("wasm heap too small for the bench cache");
    ptrs.push([k, v]);
  }
  // No allocation after this point: views stay valid.
  const ks = ptrs.map(([k], i) => {
    const a = new Float32Array(heap.buffer, k, POSITIONS * kvRow);
    fillRandom(a, 2 * i + 1, 1);
    return a;
  });
  const vs = ptrs.map(([, v], i) => {
    const a = new Float32Array(heap.buffer, v, POSITIONS * kvRow);
    fillRandom(a, 2 * i + 2, 1);
    return a;
  });
  const q = new Float32Array(SEQS * qStride);
  fillRandom(q, 99, 2);

  /** One decode step: each sequence's query (its last position) over its whole cache. */
  const step = (kernel: Kernel, out: Float32Array, scratch: AttentionScratch) => {
    for (let i = 0; i < SEQS; i++) {
      kernel(DIMS, { q, qRow: i, nQueries: 1, startPos: POSITIONS - 1 }, ks[i]!, vs[i]!, out, i, scratch);
    }
  };
  const inHeap: Kernel = (_d, queries, _k, _v, out, outRow) => {
    const i = queries.qRow;
    attendKvCacheInHeap(wasm, queries, ptrs[i]![0], ptrs[i]![1], out, outRow);
  };
  const items = ptrs.map(([kPtr, vPtr], i) => ({
    queries: { q, qRow: i, nQueries: 1, startPos: POSITIONS - 1 },
    kPtr,
    vPtr,
    outRow: i,
  }));
  const one = { label: "1 thread", bytesPerSecond: bw.bytesPerSecond };
  const all = { label: `${threads} threads`, bytesPerSecond: bw.allCores };
  type Run = { name: string; of: typeof one; seconds: number[]; out: Float32Array; fn: (out: Float32Array) => void };
  const scratch = createAttentionScratch();
  const run = (name: string, of: typeof one, fn: Run["fn"]): Run => ({
    name: `${name}, ${of.label}`,
    of,
    seconds: [],
    out: new Float32Array(SEQS * qStride),
    fn,
  });
  const results: Run[] = [
    run("baseline (issue 2: f64, per-head-group passes)", one, (out) => step(baselineAttendKvCache, out, scratch)),
    run("attendKvCache, kernel js (f64, blocked)", one, (out) =>
      step((...a) => attendKvCache(...a, "js"), out, scratch),
    ),
  ];
  for (const r of results) for (let i = 0; i < 2; i++) r.seconds.push(bestOf(1, () => r.fn(r.out)));
  const fast: Run[] = [
    run("attendKvCache, kernel wasm, K/V copied in", one, (out) =>
      step((...a) => attendKvCache(...a, "wasm"), out, scratch),
    ),
    run("KV in wasm memory (attendKvCacheInHeap)", one, (out) => step(inHeap, out, scratch)),
    run("KV in wasm memory (memory-node default)", all, (out) => pool.attend(DIMS, items, out)),
  ];
  // One unrecorded run each (wasm tier-up: V8 runs new wasm code in its
  // baseline compiler first), then interleaved reps, so that a burst of load
  // elsewhere on the machine hits each alike.
  for (const r of fast) r.fn(r.out);
  for (let i = 0; i < REPS; i++) for (const r of fast) r.seconds.push(bestOf(1, () => r.fn(r.out)));
  results.push(...fast);
  await pool.close();
  const base = Math.min(...results[0]!.seconds);
  for (const r of results) {
    const best = Math.min(...r.seconds);
    const rate = kvBytes / best;
    console.log(
      `  ${r.name.padEnd(56)} ${(best * 1000).toFixed(0).padStart(6)} ms/step (median ${(median(r.seconds) * 1000).toFixed(0)})  KV ${gb(rate)} GB/s = ${pct(rate / r.of.bytesPerSecond)} of the ${r.of.label} bandwidth (target 50%)  ${(base / best).toFixed(2)}x baseline`,
    );
  }
  let maxDiff = 0;
  for (const r of results)
    for (let i = 0; i < r.out.length; i++) maxDiff = Math.max(maxDiff, Math.abs(r.out[i]! - results[0]!.out[i]!));
  console.log(`  max |difference| from the baseline's outputs: ${maxDiff.toExponential(1)}`);
  if (!(maxDiff <= 1e-5)) throw new Error(`kernels disagree by ${maxDiff}`);
}

/** Bytes of `path` resident in the page cache per `fincore`, or undefined when fincore is missing. */
function residentBytes(path: string): number | undefined {
  const r = spawnSync("fincore", ["--bytes", "--noheadings", "--output", "RES", path], { encoding: "utf8" });
  if (r.status !== 0) return undefined;
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) ? n : undefined;
}

/**
 * Storage-node decode attention over a cache 4x its read buffer: the layer
 * files are written directly (as a node would have written them: manifest
 * and K/V interleaved by position), the node started on them, then each rep
 * drops the files' pages and sends one decode step (every sequence, 1 token).
 * The wasm kernel runs twice: with manifests that record no block CRCs (as
 * written before checksums: blocks read unchecked) and with them (every
 * block's CRC-32 checked on read, as a node's own files are); the ratio of
 * the two step times is the cost of the checksums.
 */
export async function storageNodeBench(): Promise<void> {
  const { nHeads, nKvHeads, headDim } = DIMS;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const bufferBytes = (quick ? 16 : 64) * 2 ** 20;
  const cacheBytes = 4 * bufferBytes;
  const positionBytes = 2 * kvRow * 4;
  const positions = cacheBytes / SEQS / positionBytes;
  const layout = { nLayers: 1, nHeads, nKvHeads, headDim };
  const dir = await mkdtemp(join(tmpdir(), "tessera-attention-bench-"));
  try {
    const disk = await measureDiskRead(dir, 2 * cacheBytes, bufferBytes / 2, 3);
    const how = disk.dropped ? "fresh file, pages dropped" : "page cache: could not drop pages";
    console.log(`disk sequential read (${how}): ${gb(disk.readBytesPerS)} GB/s`);
    console.log(
      `storage-node decode step: ${SEQS} sequences x ${positions} positions (${(cacheBytes / 2 ** 20).toFixed(0)} MiB of KV on disk = 4x its ${bufferBytes / 2 ** 20} MiB read buffer)`,
    );
    const dataDir = join(dir, "data");
    await mkdir(dataDir);
    const files: string[] = [];
    const manifests: { path: string; unchecked: Manifest; checked: Manifest }[] = [];
    const rows = new Float32Array(positions * 2 * kvRow);
    const blockBytes = 256 * positionBytes;
    for (let i = 0; i < SEQS; i++) {
      const seqDir = join(dataDir, sequenceDirName(`s${i}`));
      await mkdir(seqDir);
      fillRandom(rows, 1000 + i, 1);
      const file = join(seqDir, layerFileName(0));
      const bytes = new Uint8Array(rows.buffer);
      await writeFile(file, bytes);
      files.push(file);
      const crcs = Array.from({ length: Math.ceil(bytes.byteLength / blockBytes) }, (_, b) =>
        blockCrc(bytes.subarray(b * blockBytes, (b + 1) * blockBytes)),
      );
      const unchecked: Manifest = {
        format: MANIFEST_FORMAT,
        version: MANIFEST_VERSION,
        seqId: `s${i}`,
        layout,
        maxPositions: positions + 64,
        blockPositions: 256,
        dtype: "f32",
        layerLengths: [positions],
      };
      manifests.push({ path: join(seqDir, MANIFEST_FILE), unchecked, checked: { ...unchecked, blockCrcs: [crcs] } });
    }
    spawnSync("sync");
    const q = new Float32Array(SEQS * qStride);
    const kNew = new Float32Array(SEQS * kvRow);
    fillRandom(q, 7, 2);
    fillRandom(kNew, 8, 1);
    const outs: Float32Array[] = [];
    const rates: { kernel: string; checked: boolean; seconds: number[]; cachedSeconds: number }[] = [];
    // Checked and unchecked alternate (twice each), so that a change in the
    // machine's load does not land on one of them only.
    for (const [kernel, checked] of [
      ["js", false],
      ["wasm", false],
      ["wasm", true],
      ["wasm", false],
      ["wasm", true],
    ] as const) {
      for (const m of manifests) await writeFile(m.path, JSON.stringify(checked ? m.checked : m.unchecked));
      const node = createStorageNode({ dataDir, bufferBytes, fsync: "never", attentionKernel: kernel });
      await node.start();
      const client = createClient(Attention, node.address);
      const stream = openAttend(client);
      try {
        let stepId = 0n;
        const step = async () => {
          const t0 = performance.now();
          const r = await stream.attend({
            stepId: ++stepId,
            layer: 0,
            items: Array.from({ length: SEQS }, (_, i) => ({ seqId: `s${i}`, startPos: positions, nTokens: 1 })),
            q: f32Tensor(q, [SEQS, nHeads, headDim]),
            k: f32Tensor(kNew, [SEQS, nKvHeads, headDim]),
            v: f32Tensor(kNew, [SEQS, nKvHeads, headDim]),
          });
          const seconds = (performance.now() - t0) / 1000;
          if (r.error) throw new Error(`storage-node: ${r.error.message}`);
          outs.push(tensorF32(r.o, "o").slice());
          return seconds;
        };
        // Warm up with the pages cached (JIT, wasm tier-up: the first calls run
        // V8's baseline compiler), which also gives the pipeline's speed without the disk.
        let cachedSeconds = Infinity;
        for (let r = 0; r < (kernel === "js" ? 4 : 20); r++) cachedSeconds = Math.min(cachedSeconds, await step());
        const seconds: number[] = [];
        for (let r = 0; r < (kernel === "js" ? 2 : REPS); r++) {
          for (const f of files) dropFilePages(f);
          const left = files.reduce((n, f) => n + (residentBytes(f) ?? 0), 0);
          if (left > cacheBytes / 100) console.log(`  (${(left / 2 ** 20).toFixed(0)} MiB still in the page cache)`);
          seconds.push(await step());
        }
        const same = rates.find((r) => r.kernel === kernel && r.checked === checked);
        if (same) {
          same.seconds.push(...seconds);
          same.cachedSeconds = Math.min(same.cachedSeconds, cachedSeconds);
        } else rates.push({ kernel, checked, seconds, cachedSeconds });
      } finally {
        await stream.end();
        client.close();
        await node.close();
      }
    }
    const base = Math.min(...rates[0]!.seconds);
    for (const r of rates) {
      const best = Math.min(...r.seconds);
      const rate = cacheBytes / best;
      const label =
        r.kernel === "wasm" ? (r.checked ? " (default), CRCs checked" : " (default), unchecked") : " (issue 2)";
      console.log(
        `  attentionKernel ${r.kernel.padEnd(4)}${label} ${(best * 1000).toFixed(0).padStart(6)} ms/step (median ${(median(r.seconds) * 1000).toFixed(0)})  KV ${gb(rate)} GB/s from disk = ${pct(rate / disk.readBytesPerS)} of disk bandwidth (target 60%)  ${(base / best).toFixed(2)}x the JS kernel; pages cached: ${gb(cacheBytes / r.cachedSeconds)} GB/s`,
      );
    }
    const [plain, checked] = [rates[1]!, rates[2]!];
    const block = new Uint8Array(blockBytes).fill(7);
    const crcRate = (f: (b: Uint8Array) => number) =>
      (64 * blockBytes) /
      bestOf(5, () => {
        for (let i = 0; i < 64; i++) f(block);
      });
    console.log(
      `  CRC-32 of ${blockBytes}-byte blocks, one thread: ${gb(crcRate(blockCrc))} GB/s (@node-rs/crc32, the node's), ${gb(crcRate((b) => crc32(b)))} GB/s (node:zlib)`,
    );
    console.log(
      `  block CRC-32 checks (wasm): ${(median(checked.seconds) / median(plain.seconds)).toFixed(3)}x the step time from disk (median), ` +
        `${(checked.cachedSeconds / plain.cachedSeconds).toFixed(3)}x with the pages cached (best)`,
    );
    let maxDiff = 0;
    for (const o of outs)
      for (let i = 0; i < o.length; i++) maxDiff = Math.max(maxDiff, Math.abs(o[i]! - outs[0]![i]!));
    console.log(`  max |difference| between the steps' outputs: ${maxDiff.toExponential(1)}`);
    if (!(maxDiff <= 1e-5)) throw new Error(`storage-node kernels disagree by ${maxDiff}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Prints the attention roofline of both nodes: bandwidths, then each kernel's GB/s, share of bandwidth and speedup. */
export async function runAttentionBench(): Promise<void> {
  const bw = await measureReadBandwidth();
  console.log(
    `memory read bandwidth, 1 thread: ${gb(bw.bytesPerSecond)} GB/s (memcmp ${gb(bw.memcmp)}, JS f64 sum ${gb(bw.jsSum)}); ${bw.threads} threads: ${gb(bw.allCores)} GB/s`,
  );
  await memoryNodeBench(bw);
  await storageNodeBench();
}

// Run directly (`node --import tsx bench/attention.ts`), or imported by bench/main.ts.
if (import.meta.url === `file://${process.argv[1]}`) await runAttentionBench();
