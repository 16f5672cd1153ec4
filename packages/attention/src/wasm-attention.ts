/**
 * WebAssembly SIMD (f32x4) kernels of decode and streaming attention, and
 * the wasm heaps they run in. V8 runs JS kernels as scalar f64 (one
 * multiply-add per instruction); f32x4 does four, and with the K/V rows
 * already in wasm memory (the memory-node allocates its KV cache in a
 * {@link WasmHeap}, the storage-node reads its files straight into one) no
 * copy stands between the cache and the kernel, which is what moves
 * attention from compute-bound to memory-bound.
 *
 * The module is emitted here, from readable code, by a tiny binary encoder
 * (type, import, function, export and code sections, LEB128; see the
 * WebAssembly core spec 2.0, section 5 "Binary format", and its SIMD
 * instruction table), and compiled synchronously with `new WebAssembly.Module`,
 * so no opaque .wasm file is committed and no build step is added. Node 20
 * (V8 11) enables SIMD by default; where it is missing {@link createWasmHeap}
 * returns undefined and callers stay on the JS kernels.
 *
 * Kernels (all pointers are byte addresses in the heap, counts are
 * elements; head_dim must be a multiple of 4). Per block of nb positions of
 * one query, FlashAttention's online softmax (Dao et al. 2022; Milakov &
 * Gimelshein 2018) in four calls:
 * 1. `scores`: s[t, h] = q[h] . k[t, h / group] (f32x4 products, f32 sums;
 *    each K row segment is loaded once for four heads of its GQA group);
 * 2. `softmax`: per head, the block max raises the running max m, c =
 *    exp(m_old - m_new), the weights w = exp(s - m_new) replace the scores
 *    and their sum goes to lsum (exp: Cody-Waite range reduction and a
 *    degree-6 polynomial, relative error < 2e-7, f32x4);
 * 3. `accumulate`: a[h] += w[t, h] * v[t, h / group] into an f32 block
 *    accumulator;
 * 4. `merge`: acc64 = acc64 * c + a, l64 = l64 * c + lsum in f64 (and a
 *    zeroed for the next block), so only one block's products are ever
 *    summed in f32.
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
const F64 = 0x7c;
const V128 = 0x7b;
const VOID = 0x40; // empty block type

const simd = (code: number, ...imm: number[]) => [0xfd, ...uleb(code), ...imm];
/** memarg: alignment exponent, byte offset. */
const mem = (align: number, offset: number) => [align, ...uleb(offset)];
const f32Bytes = (x: number) => [...new Uint8Array(new Float32Array([x]).buffer)];
/** i8x16.shuffle immediate picking f32 lanes (0-3 first operand, 4-7 second). */
const lanes = (...l: number[]) => l.flatMap((i) => [4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3]);

/** Opcodes used by the kernels (core, and the 0xfd-prefixed SIMD ones). */
const op = {
  block: [0x02, VOID],
  loop: [0x03, VOID],
  end: [0x0b],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  i32: (n: number) => [0x41, ...sleb(n)],
  i32Add: [0x6a],
  i32Mul: [0x6c],
  i32And: [0x71],
  i32Shl: [0x74],
  i32Eqz: [0x45],
  i32LtU: [0x49],
  i32GeU: [0x4f],
  i32GtU: [0x4b],
  f32Load: (o: number) => [0x2a, ...mem(2, o)],
  f32Store: (o: number) => [0x38, ...mem(2, o)],
  f64Load: (o: number) => [0x2b, ...mem(3, o)],
  f64Store: (o: number) => [0x39, ...mem(3, o)],
  f32Add: [0x92],
  f64Add: [0xa0],
  f64Mul: [0xa2],
  f64PromoteF32: [0xbb],
  v128Load: (o: number) => simd(0x00, ...mem(4, o)),
  v128Load32Splat: (o: number) => simd(0x09, ...mem(2, o)),
  v128Store: (o: number) => simd(0x0b, ...mem(4, o)),
  f32x4Const: (x: number) => simd(0x0c, ...f32Bytes(x), ...f32Bytes(x), ...f32Bytes(x), ...f32Bytes(x)),
  i32x4Const: (x: number) => simd(0x0c, ...new Uint8Array(new Int32Array([x, x, x, x]).buffer)),
  shuffle: (l: number[]) => simd(0x0d, ...l),
  f64x2Splat: simd(0x14),
  f32x4Lane: (lane: number) => simd(0x1f, lane),
  f64x2PromoteLow: simd(0x5f),
  i32x4Shl: simd(0xab),
  i32x4Add: simd(0xae),
  f32x4Add: simd(0xe4),
  f32x4Sub: simd(0xe5),
  f32x4Mul: simd(0xe6),
  f32x4Pmin: simd(0xea),
  f32x4Pmax: simd(0xeb),
  f64x2Add: simd(0xf0),
  f64x2Mul: simd(0xf2),
} as const;

/** One function's locals by name (params first), and helpers that emit code on them. */
class Fn {
  private readonly index = new Map<string, number>();
  private readonly locals: number[] = [];
  readonly nParams: number;
  constructor(params: string[]) {
    params.forEach((p, i) => this.index.set(p, i));
    this.nParams = params.length;
  }
  /** Declares locals of one type. */
  declare(type: number, ...names: string[]): this {
    for (const n of names) {
      this.index.set(n, this.nParams + this.locals.length);
      this.locals.push(type);
    }
    return this;
  }
  private at(name: string): number {
    const i = this.index.get(name);
    if (i === undefined) throw new Error(`wasm-attention: no local ${name}`);
    return i;
  }
  get = (name: string) => [0x20, ...uleb(this.at(name))];
  set = (name: string) => [0x21, ...uleb(this.at(name))];
  /** name = value (code that pushes one value). */
  let = (name: string, value: number[]) => [...value, ...this.set(name)];
  /** i32 name += n (a constant) or += another local. */
  inc = (name: string, by: number | string) => [
    ...this.get(name),
    ...(typeof by === "number" ? op.i32(by) : this.get(by)),
    ...op.i32Add,
    ...this.set(name),
  ];
  /** do { body } while (a <u b): runs at least once. */
  doWhileLt = (a: string, b: string, body: number[]) => [
    ...op.loop,
    ...body,
    ...this.get(a),
    ...this.get(b),
    ...op.i32LtU,
    ...op.brIf(0),
    ...op.end,
  ];
  /** while (cond) { body }; `exit` pushes the negated condition. */
  whileNot = (exit: number[], body: number[]) => [
    ...op.block,
    ...op.loop,
    ...exit,
    ...op.brIf(1),
    ...body,
    ...op.br(0),
    ...op.end,
    ...op.end,
  ];
  /** The function body: locals, code, end. */
  body(code: number[]): number[] {
    const groups: number[][] = [];
    for (let i = 0; i < this.locals.length;) {
      let j = i;
      while (j < this.locals.length && this.locals[j] === this.locals[i]) j++;
      groups.push([...uleb(j - i), this.locals[i]!]);
      i = j;
    }
    const b = [...vec(groups), ...code, ...op.end];
    return [...uleb(b.length), ...b];
  }
}

/**
 * Emits the d loop over a head's `hd` floats: `body(offset)` for byte
 * offsets 0 and 16 (2 v128 per iteration when head_dim is a multiple of 8,
 * else one), reading at pointers that advance by the bytes done: every
 * pointer in `ptrs` (the first walks [kr, kr + hd * 4), others end hd * 4
 * bytes further on), so loads use immediate offsets, not an add each.
 * (4x unrolling was ~7% slower in V8 11: TurboFan hoists the loads of the
 * whole body and spills.)
 */
function dLoop(f: Fn, ptrs: string[], body: (off: number) => number[]): number[] {
  const loop = (u: number) =>
    f.doWhileLt("kp", "kend", [
      ...Array.from({ length: u }, (_, i) => body(16 * i)).flat(),
      ...ptrs.flatMap((p) => f.inc(p, 16 * u)),
    ]) as number[];
  return [
    ...f.let("kp", f.get("kr")),
    ...f.let("kend", [...f.get("kr"), ...f.get("hdb"), ...op.i32Add]),
    // if ((hdb & 31) == 0) loop(2) else loop(1)
    ...f.get("hdb"),
    ...op.i32(31),
    ...op.i32And,
    ...op.i32Eqz,
    0x04,
    VOID,
    ...loop(2),
    0x05,
    ...loop(1),
    ...op.end,
  ];
}

/** Pushes v128 at local ptr + off. */
const loadD = (f: Fn, ptr: string, off: number) => [...f.get(ptr), ...op.v128Load(off)];

/**
 * Pushes exp(x) of the f32x4 local x (x <= 0; below -87 it returns
 * exp(-87)); uses locals ex, en, er. Cody-Waite: n = round(x log2 e) by the
 * 1.5 * 2^23 trick (adding it rounds to an integer in the low mantissa
 * bits, which then give 2^n by an integer add and shift), r = x - n ln 2
 * in two parts, exp(r) by its degree-6 Taylor polynomial (|r| <= ln2 / 2:
 * relative error < 1e-7), times 2^n.
 */
function expF32x4(f: Fn, x: string): number[] {
  const LOG2E = 1.4426950408889634;
  const LN2_HI = 0.693145751953125;
  const LN2_LO = 1.428606765330187e-6;
  const MAGIC = 12582912; // 1.5 * 2^23
  const c = op.f32x4Const;
  const poly = [1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1, 1];
  // p = ((((c0 r + c1) r + c2) r ...) r + 1)
  const horner: number[] = [...c(poly[0]!)];
  for (let i = 1; i < poly.length; i++) horner.push(...f.get("er"), ...op.f32x4Mul, ...c(poly[i]!), ...op.f32x4Add);
  return [
    ...f.let("ex", [...f.get(x), ...c(-87), ...op.f32x4Pmax]),
    // ey = x log2e + MAGIC (its low mantissa bits hold round(x log2e)); en = ey - MAGIC
    ...f.let("ey", [...f.get("ex"), ...c(LOG2E), ...op.f32x4Mul, ...c(MAGIC), ...op.f32x4Add]),
    ...f.let("en", [...f.get("ey"), ...c(MAGIC), ...op.f32x4Sub]),
    ...f.let("er", [
      ...f.get("ex"),
      ...f.get("en"),
      ...c(LN2_HI),
      ...op.f32x4Mul,
      ...op.f32x4Sub,
      ...f.get("en"),
      ...c(LN2_LO),
      ...op.f32x4Mul,
      ...op.f32x4Sub,
    ]),
    ...horner,
    // * 2^n = (bits(ey) + 127) << 23: the shift drops MAGIC's bits, leaving (n + 127) << 23
    ...f.get("ey"),
    ...op.i32x4Const(127),
    ...op.i32x4Add,
    ...op.i32(23),
    ...op.i32x4Shl,
    ...op.f32x4Mul,
  ];
}

/** Both block kernels walk t < nb, g < nKv, then the group's heads four at a time, then one at a time. */
const BLOCK_PARAMS = ["p0", "kv", "p2", "nb", "strideB", "nKv", "group", "hd", "padB"];

/** scores(q, k, s, nb, strideB, nKv, group, hd, padB): s[t, h] = q[h] . k[t * stride + g * hd]. */
function scoresFn(): number[] {
  const f = new Fn(BLOCK_PARAMS)
    .declare(I32, "t", "g", "j", "kp", "kend", "row", "kr", "h0", "h1", "h2", "h3", "sw", "hdb")
    .declare(V128, "x", "a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "pa", "pb");
  const madd = (acc: string, h: string, off: number) => [
    ...f.get(acc),
    ...loadD(f, h, off),
    ...f.get("x"),
    ...op.f32x4Mul,
    ...op.f32x4Add,
    ...f.set(acc),
  ];
  const zero = (l: string) => f.let(l, op.f32x4Const(0));
  const hsum = (l: string) => [
    ...f.get(l),
    ...op.f32x4Lane(0),
    ...f.get(l),
    ...op.f32x4Lane(1),
    ...op.f32Add,
    ...f.get(l),
    ...op.f32x4Lane(2),
    ...op.f32Add,
    ...f.get(l),
    ...op.f32x4Lane(3),
    ...op.f32Add,
  ];
  // [sum a0, sum a1, sum a2, sum a3] by two rounds of pairwise shuffles.
  const pair = (dst: string, a: string, b: string) =>
    f.let(dst, [
      ...f.get(a),
      ...f.get(b),
      ...op.shuffle(lanes(0, 1, 4, 5)),
      ...f.get(a),
      ...f.get(b),
      ...op.shuffle(lanes(2, 3, 6, 7)),
      ...op.f32x4Add,
    ]);
  const quad = [
    ...f.let("h1", [...f.get("h0"), ...f.get("hdb"), ...op.i32Add]),
    ...f.let("h2", [...f.get("h1"), ...f.get("hdb"), ...op.i32Add]),
    ...f.let("h3", [...f.get("h2"), ...f.get("hdb"), ...op.i32Add]),
    ...["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"].flatMap(zero),
    // Even v128 steps into a, odd into b: eight add chains, not four (an
    // f32x4 add's latency, not the adder count, bounds four chains).
    ...dLoop(f, ["kp", "h0", "h1", "h2", "h3"], (off) => {
      const acc = (off / 16) % 2 === 0 ? "a" : "b";
      return [
        ...f.let("x", loadD(f, "kp", off)),
        ...madd(`${acc}0`, "h0", off),
        ...madd(`${acc}1`, "h1", off),
        ...madd(`${acc}2`, "h2", off),
        ...madd(`${acc}3`, "h3", off),
      ];
    }),
    ...[0, 1, 2, 3].flatMap((i) => f.let(`a${i}`, [...f.get(`a${i}`), ...f.get(`b${i}`), ...op.f32x4Add])),
    ...pair("pa", "a0", "a1"),
    ...pair("pb", "a2", "a3"),
    ...f.get("sw"),
    ...f.get("pa"),
    ...f.get("pb"),
    ...op.shuffle(lanes(0, 2, 4, 6)),
    ...f.get("pa"),
    ...f.get("pb"),
    ...op.shuffle(lanes(1, 3, 5, 7)),
    ...op.f32x4Add,
    ...op.v128Store(0),
    ...f.let("h0", f.get("h3")), // h3 has advanced to the next head
    ...f.inc("sw", 16),
    ...f.inc("j", 4),
  ];
  const single = [
    ...zero("a0"),
    ...zero("b0"),
    ...dLoop(f, ["kp", "h0"], (off) => [
      ...f.let("x", loadD(f, "kp", off)),
      ...madd((off / 16) % 2 === 0 ? "a0" : "b0", "h0", off),
    ]),
    ...f.let("a0", [...f.get("a0"), ...f.get("b0"), ...op.f32x4Add]),
    ...f.get("sw"),
    ...hsum("a0"),
    ...op.f32Store(0),
    ...f.inc("sw", 4),
    ...f.inc("j", 1),
  ];
  return f.body(blockLoops(f, quad, single, "p0"));
}

/** accumulate(w, v, a, nb, strideB, nKv, group, hd, padB): a[h] += w[t, h] * v[t * stride + g * hd]. */
function accumulateFn(): number[] {
  const f = new Fn(BLOCK_PARAMS)
    .declare(I32, "t", "g", "j", "kp", "kend", "row", "kr", "h0", "h1", "h2", "h3", "sw", "hdb")
    .declare(V128, "x", "w0", "w1", "w2", "w3");
  const axpy = (w: string, h: string, off: number) => [
    ...f.get(h),
    ...loadD(f, h, off),
    ...f.get(w),
    ...f.get("x"),
    ...op.f32x4Mul,
    ...op.f32x4Add,
    ...op.v128Store(off),
  ];
  const quad = [
    ...f.let("h1", [...f.get("h0"), ...f.get("hdb"), ...op.i32Add]),
    ...f.let("h2", [...f.get("h1"), ...f.get("hdb"), ...op.i32Add]),
    ...f.let("h3", [...f.get("h2"), ...f.get("hdb"), ...op.i32Add]),
    ...f.let("w0", [...f.get("sw"), ...op.v128Load32Splat(0)]),
    ...f.let("w1", [...f.get("sw"), ...op.v128Load32Splat(4)]),
    ...f.let("w2", [...f.get("sw"), ...op.v128Load32Splat(8)]),
    ...f.let("w3", [...f.get("sw"), ...op.v128Load32Splat(12)]),
    ...dLoop(f, ["kp", "h0", "h1", "h2", "h3"], (off) => [
      ...f.let("x", loadD(f, "kp", off)),
      ...axpy("w0", "h0", off),
      ...axpy("w1", "h1", off),
      ...axpy("w2", "h2", off),
      ...axpy("w3", "h3", off),
    ]),
    ...f.let("h0", f.get("h3")), // h3 has advanced to the next head
    ...f.inc("sw", 16),
    ...f.inc("j", 4),
  ];
  const single = [
    ...f.let("w0", [...f.get("sw"), ...op.v128Load32Splat(0)]),
    ...dLoop(f, ["kp", "h0"], (off) => [...f.let("x", loadD(f, "kp", off)), ...axpy("w0", "h0", off)]),
    ...f.inc("sw", 4),
    ...f.inc("j", 1),
  ];
  return f.body(blockLoops(f, quad, single, "p2"));
}

/**
 * t, g and head loops shared by scores and accumulate: per t, h0 restarts at
 * `hBase` (q or the accumulator), kr walks the row's KV heads, sw walks the
 * [t, h] scores (padB bytes of padding after each row).
 */
function blockLoops(f: Fn, quad: number[], single: number[], hBase: string): number[] {
  const quadExit = [...f.get("j"), ...op.i32(4), ...op.i32Add, ...f.get("group"), ...op.i32GtU];
  const singleExit = [...f.get("j"), ...f.get("group"), ...op.i32GeU];
  const sBase = hBase === "p0" ? "p2" : "p0";
  return [
    ...f.let("hdb", [...f.get("hd"), ...op.i32(2), ...op.i32Shl]),
    ...f.let("sw", f.get(sBase)),
    ...f.let("row", f.get("kv")),
    ...f.let("t", op.i32(0)),
    ...f.doWhileLt("t", "nb", [
      ...f.let("kr", f.get("row")),
      ...f.let("h0", f.get(hBase)),
      ...f.let("g", op.i32(0)),
      ...f.doWhileLt("g", "nKv", [
        ...f.let("j", op.i32(0)),
        ...f.whileNot(quadExit, quad),
        ...f.whileNot(singleExit, single),
        ...f.inc("kr", "hdb"),
        ...f.inc("g", 1),
      ]),
      ...f.inc("sw", "padB"),
      ...f.inc("row", "strideB"),
      ...f.inc("t", 1),
    ]),
  ];
}

/**
 * softmax(s, m, c, lsum, nb, nhp): for each group of 4 heads (nhp = heads
 * padded to a multiple of 4, the row length of s): the block max raises m,
 * c = exp(m_old - m_new), s = exp(s - m_new), lsum = sum over t of s.
 */
function softmaxFn(): number[] {
  const f = new Fn(["s", "m", "c", "lsum", "nb", "nhp"])
    .declare(I32, "ho", "hob", "rowB", "p", "t")
    .declare(V128, "bm", "mo", "mn", "x", "sum", "ex", "ey", "en", "er");
  return f.body([
    ...f.let("rowB", [...f.get("nhp"), ...op.i32(2), ...op.i32Shl]),
    ...f.let("ho", op.i32(0)),
    ...f.doWhileLt("ho", "rowB", [
      // Block max.
      ...f.let("p", [...f.get("s"), ...f.get("ho"), ...op.i32Add]),
      ...f.let("bm", [...f.get("p"), ...op.v128Load(0)]),
      ...f.let("t", op.i32(0)),
      ...f.doWhileLt("t", "nb", [
        ...f.let("bm", [...f.get("bm"), ...f.get("p"), ...op.v128Load(0), ...op.f32x4Pmax]),
        ...f.inc("p", "rowB"),
        ...f.inc("t", 1),
      ]),
      ...f.let("mo", [...f.get("m"), ...f.get("ho"), ...op.i32Add, ...op.v128Load(0)]),
      // pmax(mo, bm) = mo < bm ? bm : mo, so -Infinity (no position yet) gives bm.
      ...f.let("mn", [...f.get("mo"), ...f.get("bm"), ...op.f32x4Pmax]),
      ...[...f.get("m"), ...f.get("ho"), ...op.i32Add, ...f.get("mn"), ...op.v128Store(0)],
      ...f.let("x", [...f.get("mo"), ...f.get("mn"), ...op.f32x4Sub]),
      ...[...f.get("c"), ...f.get("ho"), ...op.i32Add, ...expF32x4(f, "x"), ...op.v128Store(0)],
      // Weights and their sum.
      ...f.let("sum", op.f32x4Const(0)),
      ...f.let("p", [...f.get("s"), ...f.get("ho"), ...op.i32Add]),
      ...f.let("t", op.i32(0)),
      ...f.doWhileLt("t", "nb", [
        ...f.let("x", [...f.get("p"), ...op.v128Load(0), ...f.get("mn"), ...op.f32x4Sub]),
        ...f.let("x", expF32x4(f, "x")),
        ...[...f.get("p"), ...f.get("x"), ...op.v128Store(0)],
        ...f.let("sum", [...f.get("sum"), ...f.get("x"), ...op.f32x4Add]),
        ...f.inc("p", "rowB"),
        ...f.inc("t", 1),
      ]),
      ...[...f.get("lsum"), ...f.get("ho"), ...op.i32Add, ...f.get("sum"), ...op.v128Store(0)],
      ...f.inc("ho", 16),
    ]),
  ]);
}

/**
 * merge(a, acc64, c, lsum, l64, nh, hd): per head h, acc64[h] = acc64[h] *
 * c[h] + a[h] and l64[h] = l64[h] * c[h] + lsum[h] in f64; a is zeroed.
 */
function mergeFn(): number[] {
  const f = new Fn(["a", "acc", "c", "lsum", "l", "nh", "hd"])
    .declare(I32, "h", "i", "pc", "pl", "pL")
    .declare(F64, "cf")
    .declare(V128, "cv", "x");
  const fma64 = (off: number, value: number[]) => [
    ...f.get("acc"),
    ...f.get("acc"),
    ...op.v128Load(off),
    ...f.get("cv"),
    ...op.f64x2Mul,
    ...value,
    ...op.f64x2Add,
    ...op.v128Store(off),
  ];
  return f.body([
    ...f.let("h", op.i32(0)),
    ...f.let("pc", f.get("c")),
    ...f.let("pl", f.get("lsum")),
    ...f.let("pL", f.get("l")),
    ...f.doWhileLt("h", "nh", [
      ...f.let("cf", [...f.get("pc"), ...op.f32Load(0), ...op.f64PromoteF32]),
      ...[
        ...f.get("pL"),
        ...f.get("pL"),
        ...op.f64Load(0),
        ...f.get("cf"),
        ...op.f64Mul,
        ...f.get("pl"),
        ...op.f32Load(0),
        ...op.f64PromoteF32,
        ...op.f64Add,
        ...op.f64Store(0),
      ],
      ...f.let("cv", [...f.get("cf"), ...op.f64x2Splat]),
      ...f.let("i", op.i32(0)),
      ...f.doWhileLt("i", "hd", [
        ...f.let("x", [...f.get("a"), ...op.v128Load(0)]),
        ...fma64(0, [...f.get("x"), ...op.f64x2PromoteLow]),
        ...fma64(16, [...f.get("x"), ...f.get("x"), ...op.shuffle(lanes(2, 3, 2, 3)), ...op.f64x2PromoteLow]),
        ...[...f.get("a"), ...op.f32x4Const(0), ...op.v128Store(0)],
        ...f.inc("a", 16),
        ...f.inc("acc", 32),
        ...f.inc("i", 4),
      ]),
      ...f.inc("pc", 4),
      ...f.inc("pl", 4),
      ...f.inc("pL", 8),
      ...f.inc("h", 1),
    ]),
  ]);
}

/** The module: imports memory "env" "memory"; exports scores, softmax, accumulate, merge. */
function moduleBytes(): Uint8Array {
  const name = (s: string) => [...uleb(s.length), ...new TextEncoder().encode(s)];
  const type = (n: number) => [0x60, ...vec(Array.from({ length: n }, () => [I32])), ...vec([])];
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, vec([type(9), type(6), type(7)])), // types
    // import a shared memory (limits flag 3: shared, with a maximum), 1 to 65536 pages
    ...section(2, vec([[...name("env"), ...name("memory"), 0x02, 0x03, ...uleb(1), ...uleb(65536)]])),
    ...section(3, vec([uleb(0), uleb(1), uleb(0), uleb(2)])), // functions
    ...section(
      7,
      vec([
        [...name("scores"), 0x00, 0],
        [...name("softmax"), 0x00, 1],
        [...name("accumulate"), 0x00, 2],
        [...name("merge"), 0x00, 3],
      ]),
    ),
    ...section(10, vec([scoresFn(), softmaxFn(), accumulateFn(), mergeFn()])), // code
  ]);
}

// --- Heaps -------------------------------------------------------------------

// The project's lib (ES2022, no DOM) has no WebAssembly typings; the little used here.
interface WasmMemory {
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { readonly exports: Record<string, unknown> };
  Memory: new (desc: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
};

type Kernel9 = (
  a: number,
  b: number,
  c: number,
  d: number,
  e: number,
  f: number,
  g: number,
  h: number,
  i: number,
) => void;
type Kernel6 = (a: number, b: number, c: number, d: number, e: number, f: number) => void;
type Kernel7 = (a: number, b: number, c: number, d: number, e: number, f: number, g: number) => void;

/** The kernels of one heap (see the file comment); pointers are byte addresses into that heap. */
export interface WasmKernels {
  /** s[t, h] = q[h] . k[t * strideB + (h / group) * hd * 4 bytes], t < nb; s rows hold nh floats then padB bytes. */
  scores: Kernel9;
  /** Per 4 heads of nhp: block max into m, c = exp(m_old - m_new), s = exp(s - m_new), lsum = sums. */
  softmax: Kernel6;
  /** a[h] += w[t, h] * v[t * strideB + (h / group) * hd * 4 bytes], t < nb (f32). */
  accumulate: Kernel9;
  /** acc64 = acc64 * c + a, l64 = l64 * c + lsum (f64); zeroes a. Args (a, acc64, c, lsum, l64, nh, hd). */
  merge: Kernel7;
}

/** Largest wasm32 memory: 65536 pages of 64 KiB (4 GiB). */
export const WASM_HEAP_MAX_BYTES = 65536 * 65536;
const PAGE = 65536;
const ALIGN = 64;

/**
 * A WebAssembly memory (up to 4 GiB, the wasm32 limit) with an instance of
 * the attention kernels bound to it and a first-fit allocator over it, so
 * that KV caches and read buffers can live where the kernels read them.
 * Allocations are 64-byte aligned byte offsets. The memory is shared (its
 * buffer a SharedArrayBuffer), so worker threads can run kernels on it too;
 * growing it gives a new, longer `buffer` (older views stay valid but do
 * not see the new pages): keep offsets and take views
 * ({@link WasmHeap.f32}) when needed.
 */
export interface WasmHeap {
  readonly kernels: WasmKernels;
  /**
   * The compiled module and the (shared) WebAssembly.Memory, for worker
   * threads that instantiate the kernels on the same memory
   * (attention-threads.ts).
   */
  readonly module: object;
  readonly memory: object;
  /** The memory's buffer (a new, longer one after the memory grows). */
  readonly buffer: SharedArrayBuffer;
  /**
   * True when `buffer` is this heap's memory: its current buffer or one it
   * had before a grow (a shared memory's views never detach; a view taken
   * before a grow is still a view of the same memory, just shorter, but its
   * `buffer` is a different object from the current one).
   */
  ownsBuffer(buffer: ArrayBufferLike): boolean;
  /** A view of the whole memory as f32 (element i at byte 4i). */
  f32(): Float32Array;
  /** A view of the whole memory as f64. */
  f64(): Float64Array;
  /** Bytes of the memory. */
  readonly byteLength: number;
  /** Bytes allocated and not freed. */
  readonly usedBytes: number;
  /**
   * Allocates `bytes`, zero-filled, growing the memory as needed.
   * @returns the byte offset, or undefined when the heap cannot hold it (4 GiB limit, or the OS refused).
   */
  alloc(bytes: number): number | undefined;
  /** Frees an allocation made by {@link WasmHeap.alloc}. */
  free(ptr: number): void;
}

let compiled: object | null | undefined;

function kernelModule(): object | undefined {
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(moduleBytes());
    } catch {
      compiled = null; // no WebAssembly, or no SIMD
    }
  }
  return compiled ?? undefined;
}

/**
 * Creates a heap (its memory starts at one page and grows on demand), or
 * undefined where WebAssembly SIMD is unavailable.
 */
export function createWasmHeap(): WasmHeap | undefined {
  const mod = kernelModule();
  if (!mod) return undefined;
  let memory: WasmMemory;
  let e: Record<string, unknown>;
  try {
    memory = new WebAssembly.Memory({ initial: 1, maximum: WASM_HEAP_MAX_BYTES / PAGE, shared: true });
    e = new WebAssembly.Instance(mod, { env: { memory } }).exports;
  } catch {
    return undefined; // no shared memory (threads) in this runtime
  }
  const kernels: WasmKernels = {
    scores: e["scores"] as Kernel9,
    softmax: e["softmax"] as Kernel6,
    accumulate: e["accumulate"] as Kernel9,
    merge: e["merge"] as Kernel7,
  };
  let f32: Float32Array | undefined;
  let f64: Float64Array | undefined;
  // Every buffer object the memory has had (one per grow), for ownsBuffer.
  let current = memory.buffer;
  const buffers = new WeakSet<ArrayBufferLike>([current]);
  const buf = () => {
    const b = memory.buffer;
    if (b !== current) buffers.add((current = b));
    return b;
  };
  // Free blocks [start, size], sorted by start; `top` is the end of the highest allocation.
  const freeList: [number, number][] = [];
  const sizes = new Map<number, number>();
  let top = 0;
  /** The highest `top` so far. */
  let highWater = 0;
  let used = 0;
  const heap: WasmHeap = {
    kernels,
    module: mod,
    memory,
    get buffer() {
      return buf();
    },
    ownsBuffer(b) {
      return b === buf() || buffers.has(b);
    },
    f32() {
      const b = buf();
      if (!f32 || f32.buffer !== b) f32 = new Float32Array(b);
      return f32;
    },
    f64() {
      const b = buf();
      if (!f64 || f64.buffer !== b) f64 = new Float64Array(b);
      return f64;
    },
    get byteLength() {
      return memory.buffer.byteLength;
    },
    get usedBytes() {
      return used;
    },
    alloc(bytes) {
      const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
      let ptr: number | undefined;
      const i = freeList.findIndex(([, s]) => s >= size);
      if (i >= 0) {
        const [start, s] = freeList[i]!;
        ptr = start;
        if (s === size) freeList.splice(i, 1);
        else freeList[i] = [start + size, s - size];
        new Uint8Array(memory.buffer, ptr, size).fill(0);
      } else {
        if (top + size > WASM_HEAP_MAX_BYTES) return undefined;
        const need = top + size - memory.buffer.byteLength;
        if (need > 0) {
          try {
            memory.grow(Math.ceil(need / PAGE));
          } catch {
            return undefined;
          }
          buf(); // remember the new buffer object
        }
        ptr = top;
        // Pages past the high-water mark are fresh (zero); below it, space a
        // free gave back to `top` still holds old data.
        if (ptr < highWater) new Uint8Array(memory.buffer, ptr, Math.min(size, highWater - ptr)).fill(0);
        top += size;
        highWater = Math.max(highWater, top);
      }
      sizes.set(ptr, size);
      used += size;
      return ptr;
    },
    free(ptr) {
      const size = sizes.get(ptr);
      if (size === undefined) throw new RangeError(`wasm heap: ${ptr} is not an allocation`);
      sizes.delete(ptr);
      used -= size;
      let i = freeList.findIndex(([s]) => s > ptr);
      if (i < 0) i = freeList.length;
      freeList.splice(i, 0, [ptr, size]);
      // Coalesce with the neighbours, then give the tail back to `top`.
      const next = freeList[i + 1];
      if (next && ptr + size === next[0]) {
        freeList[i] = [ptr, size + next[1]];
        freeList.splice(i + 1, 1);
      }
      const prev = freeList[i - 1];
      if (prev && prev[0] + prev[1] === ptr) {
        prev[1] += freeList[i]![1];
        freeList.splice(i, 1);
      }
      const last = freeList[freeList.length - 1];
      if (last && last[0] + last[1] === top) {
        top = last[0];
        freeList.pop();
      }
    },
  };
  return heap;
}
