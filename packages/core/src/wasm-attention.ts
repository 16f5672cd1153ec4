/**
 * WebAssembly SIMD (f32x4) kernels for the hot loops of decode attention:
 * the scores q . k of a block of positions for every head, and the weighted
 * sum of the block's V rows. V8 runs the JS kernels as scalar f64 (one
 * multiply-add per instruction); f32x4 does four, which is what moves
 * {@link attendKvCache} from compute-bound towards memory-bound.
 *
 * The module is emitted here, from readable code, by a tiny binary encoder
 * (type, function, memory, export and code sections, LEB128; see the
 * WebAssembly core spec 1.0, section 5 "Binary format", and the SIMD
 * proposal's opcode table), and compiled synchronously with
 * `new WebAssembly.Module`, so no opaque .wasm file is committed and no
 * build step is added. Node 20 (V8 11) enables SIMD by default; where it is
 * missing {@link getWasmAttention} returns undefined and callers stay on JS.
 *
 * Layout of one block in wasm memory (byte offsets from {@link WasmAttention.reserve}):
 * q [n_heads, head_dim] f32, K and V [block, n_kv_heads, head_dim] f32 each,
 * scores/weights [block, n_heads] f32, block accumulator [n_heads, head_dim] f32.
 */

// --- Binary encoder ----------------------------------------------------------

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (i32.const immediates). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

/** A vector: its length, then its items. */
function vec(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

const I32 = 0x7f;
const V128 = 0x7b;
const VOID = 0x40; // empty block type

/** Opcodes used by the kernels (core, and the 0xfd-prefixed SIMD ones). */
const op = {
  block: [0x02, VOID],
  loop: [0x03, VOID],
  end: [0x0b],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  i32: (n: number) => [0x41, ...sleb(n)],
  i32Add: [0x6a],
  i32Mul: [0x6c],
  i32Shl: [0x74],
  i32LtU: [0x49],
  i32GtU: [0x4b],
  i32GeU: [0x4f],
  f32Load: (offset: number) => [0x2a, 2, ...uleb(offset)],
  f32Store: (offset: number) => [0x38, 2, ...uleb(offset)],
  f32Add: [0x92],
  v128Load: [0xfd, ...uleb(0x00), 4, 0],
  v128Store: [0xfd, ...uleb(0x0b), 4, 0],
  v128Zero: [0xfd, ...uleb(0x0c), ...new Array<number>(16).fill(0)],
  f32x4Splat: [0xfd, ...uleb(0x13)],
  f32x4Lane: (lane: number) => [0xfd, ...uleb(0x1f), lane],
  f32x4Add: [0xfd, ...uleb(0xe4)],
  f32x4Mul: [0xfd, ...uleb(0xe6)],
} as const;

/** local = a + b (i32 locals). */
const addTo = (dst: number, a: number, b: number) => [...op.get(a), ...op.get(b), ...op.i32Add, ...op.set(dst)];
/** local += constant. */
const inc = (l: number, n: number) => [...op.get(l), ...op.i32(n), ...op.i32Add, ...op.set(l)];
/** Pushes the byte address base + 4 * ((a * b + c) * d) (element offsets of f32 arrays). */
const addr = (base: number, a: number, b: number, c: number, d: number) => [
  ...op.get(base),
  ...op.get(a),
  ...op.get(b),
  ...op.i32Mul,
  ...op.get(c),
  ...op.i32Add,
  ...op.get(d),
  ...op.i32Mul,
  ...op.i32(2),
  ...op.i32Shl,
  ...op.i32Add,
];
/** Pushes the sum of the 4 lanes of a v128 local. */
const hsum = (l: number) => [
  ...op.get(l),
  ...op.f32x4Lane(0),
  ...op.get(l),
  ...op.f32x4Lane(1),
  ...op.f32Add,
  ...op.get(l),
  ...op.f32x4Lane(2),
  ...op.f32Add,
  ...op.get(l),
  ...op.f32x4Lane(3),
  ...op.f32Add,
];

// Both kernels take (qOrW, kOrV, out, nb, nKvHeads, group, headDim), byte
// pointers and counts, and walk t < nb, g < nKvHeads, then the group's heads
// four at a time (each K/V load shared by four heads, four independent add
// chains) and one at a time for the rest; headDim must be a multiple of 4.
const P0 = 0; // q (scores) or weights (accumulate)
const P1 = 1; // K or V block
const P2 = 2; // scores out, or block accumulator
const NB = 3;
const NKV = 4;
const GROUP = 5;
const HD = 6;
const T = 7;
const G = 8;
const J = 9;
const D = 10;
const ROW = 11; // byte address of the K/V row segment of (t, g)
const H0 = 12; // byte address of head j's q (scores) or accumulator (accumulate)
const H1 = 13;
const H2 = 14;
const H3 = 15;
const HDB = 16; // headDim * 4
const SW = 17; // byte address of the score / weight of (t, head j)
const NH = 18; // n_heads
const X = 19; // v128 locals from here
const A0 = 20;
const A1 = 21;
const A2 = 22;
const A3 = 23;
const LOCALS = [
  [...uleb(NH - T + 1), I32],
  [...uleb(A3 - X + 1), V128],
];

/** Loops over t and g around `perGroup`, which sees ROW, SW and H0 set for head j = 0. */
function outerLoops(perGroup: number[]): number[] {
  return [
    ...op.get(HD),
    ...op.i32(2),
    ...op.i32Shl,
    ...op.set(HDB),
    ...op.get(NKV),
    ...op.get(GROUP),
    ...op.i32Mul,
    ...op.set(NH),
    ...op.i32(0),
    ...op.set(T),
    ...op.loop,
    ...op.i32(0),
    ...op.set(G),
    ...op.loop,
    ...addr(P1, T, NKV, G, HD),
    ...op.set(ROW),
    ...perGroup,
    ...inc(G, 1),
    ...op.get(G),
    ...op.get(NKV),
    ...op.i32LtU,
    ...op.brIf(0),
    ...op.end,
    ...inc(T, 1),
    ...op.get(T),
    ...op.get(NB),
    ...op.i32LtU,
    ...op.brIf(0),
    ...op.end,
  ];
}

/** Sets SW = base + 4 * (t * nHeads + g * group) and H0 = hBase + 4 * (g * group * headDim); J = 0. */
function groupStart(swBase: number, hBase: number): number[] {
  return [
    // SW = swBase + 4 * (t * nHeads + g * group)
    ...op.get(swBase),
    ...op.get(T),
    ...op.get(NH),
    ...op.i32Mul,
    ...op.get(G),
    ...op.get(GROUP),
    ...op.i32Mul,
    ...op.i32Add,
    ...op.i32(2),
    ...op.i32Shl,
    ...op.i32Add,
    ...op.set(SW),
    // H0 = hBase + 4 * (g * group * headDim)
    ...op.get(hBase),
    ...op.get(G),
    ...op.get(GROUP),
    ...op.i32Mul,
    ...op.get(HD),
    ...op.i32Mul,
    ...op.i32(2),
    ...op.i32Shl,
    ...op.i32Add,
    ...op.set(H0),
    ...op.i32(0),
    ...op.set(J),
  ];
}

/** Quad-head loop then single-head loop over the group's heads; `quadBody` / `singleBody` see H0..H3 and SW. */
function headLoops(quadBody: number[], singleBody: number[]): number[] {
  return [
    // while (j + 4 <= group)
    ...op.block,
    ...op.loop,
    ...op.get(J),
    ...op.i32(4),
    ...op.i32Add,
    ...op.get(GROUP),
    ...op.i32GtU,
    ...op.brIf(1),
    ...addTo(H1, H0, HDB),
    ...addTo(H2, H1, HDB),
    ...addTo(H3, H2, HDB),
    ...quadBody,
    ...addTo(H0, H3, HDB),
    ...inc(SW, 16),
    ...inc(J, 4),
    ...op.br(0),
    ...op.end,
    ...op.end,
    // while (j < group)
    ...op.block,
    ...op.loop,
    ...op.get(J),
    ...op.get(GROUP),
    ...op.i32GeU,
    ...op.brIf(1),
    ...singleBody,
    ...addTo(H0, H0, HDB),
    ...inc(SW, 4),
    ...inc(J, 1),
    ...op.br(0),
    ...op.end,
    ...op.end,
  ];
}

/** for (d = 0; d < headDim * 4; d += 16) body (body reads D as a byte offset). */
function dLoop(body: number[]): number[] {
  return [
    ...op.i32(0),
    ...op.set(D),
    ...op.loop,
    ...body,
    ...inc(D, 16),
    ...op.get(D),
    ...op.get(HDB),
    ...op.i32LtU,
    ...op.brIf(0),
    ...op.end,
  ];
}

/** Pushes v128 at local ptr + D. */
const loadAt = (ptr: number) => [...op.get(ptr), ...op.get(D), ...op.i32Add, ...op.v128Load];
/** acc = acc + load(h + D) * X */
const madd = (acc: number, h: number) => [
  ...op.get(acc),
  ...loadAt(h),
  ...op.get(X),
  ...op.f32x4Mul,
  ...op.f32x4Add,
  ...op.set(acc),
];
/** store(h + D) = load(h + D) + w * X */
const axpy4 = (w: number, h: number) => [
  ...op.get(h),
  ...op.get(D),
  ...op.i32Add,
  ...loadAt(h),
  ...op.get(w),
  ...op.get(X),
  ...op.f32x4Mul,
  ...op.f32x4Add,
  ...op.v128Store,
];
const zero = (l: number) => [...op.v128Zero, ...op.set(l)];
const storeScore = (offset: number, l: number) => [...op.get(SW), ...hsum(l), ...op.f32Store(offset)];
const splatWeight = (offset: number, l: number) => [
  ...op.get(SW),
  ...op.f32Load(offset),
  ...op.f32x4Splat,
  ...op.set(l),
];

/** scores(q, k, s, nb, nKvHeads, group, headDim): s[t, h] = q[h] . k[t, h / group]. */
const scoresBody = outerLoops([
  ...groupStart(P2, P0),
  ...headLoops(
    [
      ...zero(A0),
      ...zero(A1),
      ...zero(A2),
      ...zero(A3),
      ...dLoop([...loadAt(ROW), ...op.set(X), ...madd(A0, H0), ...madd(A1, H1), ...madd(A2, H2), ...madd(A3, H3)]),
      ...storeScore(0, A0),
      ...storeScore(4, A1),
      ...storeScore(8, A2),
      ...storeScore(12, A3),
    ],
    [...zero(A0), ...dLoop([...loadAt(ROW), ...op.set(X), ...madd(A0, H0)]), ...storeScore(0, A0)],
  ),
]);

/** accumulate(w, v, a, nb, nKvHeads, group, headDim): a[h] += w[t, h] * v[t, h / group]. */
const accumulateBody = outerLoops([
  ...groupStart(P0, P2),
  ...headLoops(
    [
      ...splatWeight(0, A0),
      ...splatWeight(4, A1),
      ...splatWeight(8, A2),
      ...splatWeight(12, A3),
      ...dLoop([...loadAt(ROW), ...op.set(X), ...axpy4(A0, H0), ...axpy4(A1, H1), ...axpy4(A2, H2), ...axpy4(A3, H3)]),
    ],
    [...splatWeight(0, A0), ...dLoop([...loadAt(ROW), ...op.set(X), ...axpy4(A0, H0)])],
  ),
]);

/** The module: memory 0 (exported "memory"), functions "scores" and "accumulate". */
function moduleBytes(): Uint8Array {
  const name = (s: string) => [...uleb(s.length), ...new TextEncoder().encode(s)];
  const fnType = [0x60, ...vec([[I32], [I32], [I32], [I32], [I32], [I32], [I32]]), ...vec([])];
  const body = (code: number[]) => {
    const b = [...vec(LOCALS), ...code, ...op.end];
    return [...uleb(b.length), ...b];
  };
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, vec([fnType])), // types
    ...section(3, vec([uleb(0), uleb(0)])), // functions: both of type 0
    ...section(5, vec([[0x00, ...uleb(1)]])), // memory: min 1 page, no max
    ...section(
      7,
      vec([
        [...name("memory"), 0x02, 0],
        [...name("scores"), 0x00, 0],
        [...name("accumulate"), 0x00, 1],
      ]),
    ), // exports
    ...section(10, vec([body(scoresBody), body(accumulateBody)])), // code
  ]);
}

// --- JS side -----------------------------------------------------------------

/**
 * Buffers of one block in wasm memory, as element offsets into `f32` (a view
 * of the whole memory; re-read it after each {@link WasmAttention.reserve},
 * which may grow the memory and detach older views).
 */
export interface WasmAttentionBuffers {
  readonly f32: Float32Array;
  /** [n_heads, head_dim] query, pre-scaled. */
  readonly q: number;
  /** [block, n_kv_heads, head_dim] K, then V, rows of the block. */
  readonly kv: number;
  /** [block, n_heads] scores, then weights. */
  readonly s: number;
  /** [n_heads, head_dim] block accumulator. */
  readonly acc: number;
}

/**
 * The compiled kernels and their memory (one per process; not re-entrant,
 * which JS's single thread guarantees as long as callers do not await
 * between reserve and the last kernel call). Pointers are byte addresses
 * (element offset x 4), counts are elements; headDim must be a multiple of 4.
 */
export interface WasmAttention {
  /** Lays out (and grows memory for) the buffers of blocks of up to `block` positions. */
  reserve(nHeads: number, nKvHeads: number, headDim: number, block: number): WasmAttentionBuffers;
  /** s[t * n_heads + h] = q[h * head_dim..] . kv[(t * n_kv_heads + h / group) * head_dim..], t < nb; f32x4, f32 sums. */
  scores(q: number, kv: number, s: number, nb: number, nKvHeads: number, group: number, headDim: number): void;
  /** acc[h * head_dim + d] += w[t * n_heads + h] * kv[(t * n_kv_heads + h / group) * head_dim + d], t < nb; f32. */
  accumulate(w: number, kv: number, acc: number, nb: number, nKvHeads: number, group: number, headDim: number): void;
}

// The project's lib (ES2022, no DOM) has no WebAssembly typings; the little used here.
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object) => { readonly exports: Record<string, unknown> };
};

type Kernel = (p0: number, p1: number, p2: number, nb: number, nKv: number, group: number, hd: number) => void;

let cached: WasmAttention | null | undefined;

/**
 * The WebAssembly SIMD attention kernels, compiled on first use (about a
 * millisecond: the module is about 1.2 KiB), or undefined where WebAssembly or
 * its SIMD extension is unavailable.
 */
export function getWasmAttention(): WasmAttention | undefined {
  if (cached === undefined) cached = compile();
  return cached ?? undefined;
}

function compile(): WasmAttention | null {
  let instance: { readonly exports: Record<string, unknown> };
  try {
    instance = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes()));
  } catch {
    return null; // no WebAssembly, or no SIMD
  }
  const memory = instance.exports["memory"] as WasmMemory;
  const scores = instance.exports["scores"] as Kernel;
  const accumulate = instance.exports["accumulate"] as Kernel;
  let f32 = new Float32Array(memory.buffer);
  return {
    reserve(nHeads, nKvHeads, headDim, block) {
      // Regions start on 16-byte boundaries (headDim % 4 == 0 keeps every row aligned too).
      const align = (n: number) => (n + 3) & ~3;
      const q = 0;
      const acc = align(q + nHeads * headDim);
      const s = align(acc + nHeads * headDim);
      const kv = align(s + block * nHeads);
      const bytes = 4 * (kv + block * nKvHeads * headDim);
      if (bytes > memory.buffer.byteLength) {
        memory.grow(Math.ceil((bytes - memory.buffer.byteLength) / 65536));
        f32 = new Float32Array(memory.buffer);
      }
      return { f32, q, kv, s, acc };
    },
    scores,
    accumulate,
  };
}
