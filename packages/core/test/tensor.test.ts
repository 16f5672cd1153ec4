import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeF16,
  encodeF16,
  f16ToF32,
  f32BitsToF16Bits,
  f32Tensor,
  stridedWireTensor,
  tensorF32,
  wireTensor,
} from "@tessera/core";
import { DType, create, TensorSchema } from "@tessera/proto";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number) => ((f32[0] = x), u32[0]!);
const valueOf = (bits: number) => ((u32[0] = bits), f32[0]!);

/** The positive finite f16 values in order (bits 0..0x7bff are monotonic). */
const positives = Float64Array.from({ length: 0x7c00 }, (_, h) => f16ToF32(h));

/**
 * Reference rounding by search: the nearest f16 to `x` (exactly, in
 * doubles), ties to the even mantissa, |x| >= 65520 to inf.
 */
function referenceF16(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  let lo = 0;
  let hi = 0x7bff;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (positives[mid]! <= a) lo = mid;
    else hi = mid;
  }
  if (positives[hi]! <= a) lo = hi;
  if (lo === 0x7bff) return sign | lo;
  const below = positives[lo]!;
  const above = positives[lo + 1]!;
  const midpoint = (below + above) / 2;
  if (a < midpoint) return sign | lo;
  if (a > midpoint) return sign | (lo + 1);
  return sign | (lo % 2 === 0 ? lo : lo + 1);
}

test("f16 -> f32 decodes all 65536 bit patterns exactly", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const out = decodeF16(all, new Float32Array(65536));
  for (let h = 0; h < 65536; h++) {
    const want = f16ToF32(h);
    if (Number.isNaN(want)) assert.ok(Number.isNaN(out[h]), `0x${h.toString(16)}`);
    else assert.ok(Object.is(out[h], want), `0x${h.toString(16)}: ${out[h]} vs ${want}`);
  }
});

test("f32 -> f16 round-trips every f16 value and keeps NaN a NaN", () => {
  for (let h = 0; h < 65536; h++) {
    const x = f16ToF32(h);
    const back = f32BitsToF16Bits(bitsOf(x));
    if (Number.isNaN(x)) assert.equal(back & 0x7e00, 0x7e00, `NaN 0x${h.toString(16)} -> 0x${back.toString(16)}`);
    else assert.equal(back, h, `0x${h.toString(16)} (${x})`);
  }
});

test("f32 -> f16 rounds to nearest even at every midpoint and one f32 ulp either side", () => {
  let checked = 0;
  for (let h = 0; h < 0x7bff; h++) {
    for (const sign of [1, -1]) {
      const mid = (sign * (positives[h]! + positives[h + 1]!)) / 2; // exact in f32: one more bit
      const mb = bitsOf(mid);
      for (const bits of [mb - 1, mb, mb + 1]) {
        const x = valueOf(bits >>> 0);
        assert.equal(f32BitsToF16Bits(bits >>> 0), referenceF16(x), `${x} (bits 0x${(bits >>> 0).toString(16)})`);
        checked++;
      }
    }
  }
  assert.equal(checked, 0x7bff * 6);
});

test("f32 -> f16 edge values: overflow, inf, NaN, signed zero, tiny subnormals", () => {
  const cases: [number, number][] = [
    [65504, 0x7bff],
    [65519.99, 0x7bff],
    [65520, 0x7c00],
    [1e9, 0x7c00],
    [-1e9, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [0, 0],
    [-0, 0x8000],
    [2 ** -24, 1], // smallest subnormal
    [2 ** -25, 0], // tie: to even (zero)
    [2 ** -25 * 1.0000001, 1],
    [-(2 ** -25) * 3, 0x8002], // 1.5 ulp: tie to even (2)
    [2 ** -14, 0x400], // smallest normal
    [2 ** -14 - 2 ** -25, 0x400], // tie between largest subnormal (odd) and smallest normal (even)
    [1e-40, 0], // f32 subnormal
  ];
  for (const [x, h] of cases) assert.equal(f32BitsToF16Bits(bitsOf(x)), h, `${x}`);
  assert.equal(f32BitsToF16Bits(bitsOf(NaN)) & 0x7e00, 0x7e00);
});

test("f32 -> f16 agrees with the reference on 200000 random bit patterns", () => {
  let s = 12345;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s);
  const src = new Float32Array(200_000);
  const u = new Uint32Array(src.buffer);
  for (let i = 0; i < u.length; i++) {
    // Half of them near the f16 range, where rounding matters.
    u[i] = i % 2 ? rnd() : ((rnd() & 0x80ffffff) | ((100 + (rnd() % 45)) << 23)) >>> 0;
  }
  const out = encodeF16(src, new Uint16Array(src.length));
  for (let i = 0; i < src.length; i++) {
    const want = referenceF16(src[i]!);
    if (Number.isNaN(src[i])) assert.equal(out[i]! & 0x7e00, 0x7e00);
    else assert.equal(out[i], want, `${src[i]} (bits 0x${u[i]!.toString(16)})`);
  }
});

test("wireTensor: f32 is a view, f16 halves the bytes and decodes to the rounded values", () => {
  const data = Float32Array.from([1, -2.5, 0.1, 70000, 3e-6, -0]);
  const t32 = wireTensor(data, [2, 3], "f32");
  assert.equal(t32.dtype, DType.DTYPE_F32);
  assert.equal((t32.data as Uint8Array).buffer, data.buffer);
  const t16 = create(TensorSchema, wireTensor(data, [2, 3], "f16"));
  assert.equal(t16.dtype, DType.DTYPE_F16);
  assert.equal(t16.data.byteLength, 12);
  const back = tensorF32(t16, "x");
  assert.deepEqual(
    [...back],
    [...data].map((v) => f16ToF32(f32BitsToF16Bits(bitsOf(v)))),
  );
  assert.equal(back[3], Infinity);
  // A reused buffer: the result is a view of it.
  const scratch = new Float32Array(10);
  assert.equal(tensorF32(t16, "x", scratch).buffer, scratch.buffer);
  // Into caller bytes.
  const bytes = new Uint8Array(64);
  assert.equal((wireTensor(data, [6], "f16", bytes).data as Uint8Array).buffer, bytes.buffer);
  assert.throws(() => wireTensor(data, [6], "f16", new Uint8Array(4)), /cannot hold 6 values/);
  assert.throws(() => wireTensor(data, [7], "f16"), /needs 7 values, got 6/);
});

test("tensorF32 decodes unaligned f16 and f32 bytes and names the field in errors", () => {
  const data = Float32Array.from([1.5, -3, 0.25]);
  for (const dtype of ["f16", "f32"] as const) {
    const t = create(TensorSchema, wireTensor(data, [3], dtype));
    const shifted = new Uint8Array(t.data.byteLength + 1);
    shifted.set(t.data, 1);
    const unaligned = create(TensorSchema, { dtype: t.dtype, shape: [3], data: shifted.subarray(1) });
    assert.deepEqual([...tensorF32(unaligned, "q")], [1.5, -3, 0.25]);
  }
  assert.throws(() => tensorF32(undefined, "q"), /^RangeError: q is missing$/);
  const bf16 = create(TensorSchema, { dtype: DType.DTYPE_BF16, shape: [1], data: new Uint8Array(2) });
  assert.throws(() => tensorF32(bf16, "k"), /k: expected dtype F32 or F16, got DTYPE_BF16/);
  const short = create(TensorSchema, { dtype: DType.DTYPE_F16, shape: [3], data: new Uint8Array(4) });
  assert.throws(() => tensorF32(short, "v"), /v: shape \[3\] of DTYPE_F16 needs 6 bytes, got 4/);
});

test("stridedWireTensor picks rows and a column block straight into wire bytes", () => {
  // 4 rows x 6 columns, value = 10 * row + column.
  const src = Float32Array.from({ length: 24 }, (_, i) => 10 * Math.floor(i / 6) + (i % 6));
  const block = {
    width: 6,
    rowRanges: [
      [0, 1],
      [2, 2],
    ] as [number, number][],
    col0: 2,
    cols: 3,
  };
  const want = [2, 3, 4, 22, 23, 24, 32, 33, 34];
  for (const dtype of ["f32", "f16"] as const) {
    const t = create(TensorSchema, stridedWireTensor(src, block, [3, 3], dtype));
    assert.deepEqual([...tensorF32(t, "q")], want, dtype);
  }
  const plain = create(TensorSchema, f32Tensor(src, [4, 6]));
  assert.equal(tensorF32(plain).length, 24);
  assert.throws(() => stridedWireTensor(src, { ...block, col0: 4 }, [3, 3], "f16"), /columns \[4, 7\) are outside/);
  assert.throws(() => stridedWireTensor(src, block, [3, 4], "f16"), /needs 12 values, the block has 3 x 3/);
});
