/**
 * Helpers between typed arrays and the wire `Tensor` message (dtype, shape,
 * raw little-endian bytes). Activations travel as f32 or f16: f32 tensors
 * are views on the caller's memory (zero-copy), f16 tensors are encoded from
 * f32 in one pass straight into the bytes that become `Tensor.data`, and
 * decoding f16 writes into a caller's reusable buffer where one is given.
 *
 * The f16 conversions are IEEE 754 binary16 with round-to-nearest-even,
 * subnormals, ±inf (overflow rounds to inf) and NaN (kept NaN, quieted).
 * Node 20 has no Float16Array, so they work on the bits: a 64 Ki-entry
 * table for f16 -> f32, integer rounding for f32 -> f16 (the method of
 * Giesen's `float_to_half_fast3_rtne`, with the subnormal case done in
 * integers). Little-endian hosts only, like the f32 views (every platform
 * Node runs on).
 */
import { DType, type Tensor, type MessageInitShape, type TensorSchema } from "@tessera/proto";

/** A wire dtype for activations: "f16" halves the bytes, "f32" is exact. */
export type WireDtype = "f16" | "f32";

// ---------------------------------------------------------------------------
// f16 <-> f32 bits

/**
 * The value of the IEEE 754 binary16 bits `h` (subnormals, ±inf and NaN
 * included), one at a time by arithmetic: the scalar reference of
 * {@link decodeF16}'s table.
 */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

let f16Table: Uint32Array | undefined;

/** f32 bits of every f16 value, by its bits (256 KiB, built on first use). */
function f16ToF32Table(): Uint32Array {
  if (f16Table) return f16Table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    let mant = h & 0x3ff;
    let bits: number;
    if (exp === 0x1f) {
      bits = 0x7f800000 | (mant << 13); // inf, or NaN keeping its payload
    } else if (exp !== 0) {
      bits = ((exp + 112) << 23) | (mant << 13);
    } else if (mant === 0) {
      bits = 0;
    } else {
      // Subnormal: normalise (f32 has the range for every f16 subnormal).
      let e = 113;
      while ((mant & 0x400) === 0) {
        mant <<= 1;
        e--;
      }
      bits = (e << 23) | ((mant & 0x3ff) << 13);
    }
    t[h] = (sign | bits) >>> 0;
  }
  return (f16Table = t);
}

/**
 * f16 bits of the f32 value with bits `u`, rounded to nearest, ties to even.
 * Overflow (|x| >= 65520) gives ±inf; NaN gives a quiet NaN with the top
 * payload bits kept.
 */
export function f32BitsToF16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x47800000) {
    // >= 2^16 (overflow), inf or NaN.
    if (a > 0x7f800000) return sign | 0x7e00 | ((a >>> 13) & 0x3ff);
    return sign | 0x7c00;
  }
  if (a >= 0x38800000) {
    // Normal f16 (>= 2^-14): rebias, add half an ulp minus one plus the
    // kept lowest bit (ties to even), truncate. A carry into the exponent is
    // correct, up to inf.
    return sign | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
  }
  if (a <= 0x33000000) return sign; // <= 2^-25: rounds to (signed) zero, 2^-25 a tie to even
  // Subnormal f16: the mantissa with its implicit 1, shifted right by
  // 126 - exponent (14..24), rounded to nearest even.
  const m = (a & 0x7fffff) | 0x800000;
  const shift = 126 - (a >>> 23);
  let h = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && h & 1)) h++;
  return sign | h;
}

/**
 * Writes `src` as f16 bits into `dst` (same length), one pass.
 * @throws RangeError when the lengths differ.
 */
export function encodeF16(src: Float32Array, dst: Uint16Array): Uint16Array {
  if (dst.length !== src.length) throw new RangeError(`encodeF16: ${src.length} values into ${dst.length} slots`);
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < u.length; i++) dst[i] = f32BitsToF16Bits(u[i]!);
  return dst;
}

/**
 * Writes the f16 values `src` as f32 into `dst` (same length), one pass
 * (exact: every f16 value is an f32 value).
 * @throws RangeError when the lengths differ.
 */
export function decodeF16(src: Uint16Array, dst: Float32Array): Float32Array {
  if (dst.length !== src.length) throw new RangeError(`decodeF16: ${src.length} values into ${dst.length} slots`);
  const t = f16ToF32Table();
  const u = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) u[i] = t[src[i]!]!;
  return dst;
}

// ---------------------------------------------------------------------------
// Wire tensors

const elements = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Tensor init for f32 data of `shape`; shares `data`'s memory. */
export function f32Tensor(data: Float32Array, shape: readonly number[]): MessageInitShape<typeof TensorSchema> {
  const n = elements(shape);
  if (n !== data.length)
    throw new RangeError(`tensor shape [${shape.join(", ")}] needs ${n} values, got ${data.length}`);
  return {
    dtype: DType.DTYPE_F32,
    shape: [...shape],
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

/**
 * Tensor init for f32 `data` of `shape` sent as `dtype`: f32 shares
 * `data`'s memory ({@link f32Tensor}); f16 is encoded in one pass into
 * fresh bytes (or into `bytes`, a caller's reusable buffer of at least
 * 2 x data.length bytes, 2-byte aligned) that become `Tensor.data`.
 * @throws RangeError when the shape does not match `data`, or `bytes` is too short.
 */
export function wireTensor(
  data: Float32Array,
  shape: readonly number[],
  dtype: WireDtype,
  bytes?: Uint8Array,
): MessageInitShape<typeof TensorSchema> {
  if (dtype === "f32") return f32Tensor(data, shape);
  const n = elements(shape);
  if (n !== data.length)
    throw new RangeError(`tensor shape [${shape.join(", ")}] needs ${n} values, got ${data.length}`);
  const out = f16Bytes(n, bytes);
  encodeF16(data, new Uint16Array(out.buffer, out.byteOffset, n));
  return { dtype: DType.DTYPE_F16, shape: [...shape], data: out };
}

/** `bytes` cut to 2n bytes, or fresh ones. */
function f16Bytes(n: number, bytes: Uint8Array | undefined): Uint8Array {
  if (!bytes) return new Uint8Array(2 * n);
  if (bytes.byteLength < 2 * n || bytes.byteOffset % 2 !== 0)
    throw new RangeError(`f16 buffer of ${bytes.byteLength} bytes cannot hold ${n} values`);
  return bytes.subarray(0, 2 * n);
}

/**
 * A block of rows and columns of a row-major f32 matrix: rows `rowRanges`
 * ([first row, row count], one after another) and, of each row, columns
 * [col0, col0 + cols) of `width`.
 */
export interface StridedBlock {
  width: number;
  rowRanges: readonly (readonly [number, number])[];
  col0: number;
  cols: number;
}

/**
 * Tensor init of a {@link StridedBlock} of `src` in `dtype`, copied once
 * straight into the bytes that become `Tensor.data` (no gather buffer):
 * f32 into fresh bytes (or `bytes`), f16 encoded on the way. The block's
 * values must number product(shape).
 * @throws RangeError when the block does not fit `src` or `shape`, or `bytes` is too short.
 */
export function stridedWireTensor(
  src: Float32Array,
  block: StridedBlock,
  shape: readonly number[],
  dtype: WireDtype,
  bytes?: Uint8Array,
): MessageInitShape<typeof TensorSchema> {
  const { width, rowRanges, col0, cols } = block;
  const rows = rowRanges.reduce((a, [, n]) => a + n, 0);
  const n = elements(shape);
  if (rows * cols !== n)
    throw new RangeError(`tensor shape [${shape.join(", ")}] needs ${n} values, the block has ${rows} x ${cols}`);
  if (col0 < 0 || col0 + cols > width)
    throw new RangeError(`columns [${col0}, ${col0 + cols}) are outside rows of width ${width}`);
  for (const [r0, k] of rowRanges) {
    if (r0 < 0 || (r0 + k) * width > src.length)
      throw new RangeError(`rows [${r0}, ${r0 + k}) are outside a [${src.length / width}, ${width}] matrix`);
  }
  if (dtype === "f32") {
    let out: Uint8Array;
    if (!bytes) out = new Uint8Array(4 * n);
    else if (bytes.byteLength >= 4 * n && bytes.byteOffset % 4 === 0) out = bytes.subarray(0, 4 * n);
    else throw new RangeError(`f32 buffer of ${bytes.byteLength} bytes cannot hold ${n} values`);
    const dst = new Float32Array(out.buffer, out.byteOffset, n);
    let at = 0;
    for (const [r0, k] of rowRanges) {
      for (let r = r0; r < r0 + k; r++, at += cols)
        dst.set(src.subarray(r * width + col0, r * width + col0 + cols), at);
    }
    return { dtype: DType.DTYPE_F32, shape: [...shape], data: out };
  }
  const out = f16Bytes(n, bytes);
  const dst = new Uint16Array(out.buffer, out.byteOffset, n);
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  let at = 0;
  for (const [r0, k] of rowRanges) {
    for (let r = r0; r < r0 + k; r++) {
      const base = r * width + col0;
      for (let c = 0; c < cols; c++) dst[at++] = f32BitsToF16Bits(u[base + c]!);
    }
  }
  return { dtype: DType.DTYPE_F16, shape: [...shape], data: out };
}

/**
 * The f32 values of a wire tensor of dtype F32 or F16. F32: a view on its
 * bytes when they are 4-byte aligned, else a copy. F16: decoded into
 * `scratch` (a caller's reusable buffer, used when it holds at least
 * product(shape) values; the result is then a view of it) or into a fresh
 * array.
 * @throws RangeError naming `what` when the tensor is missing, its dtype is
 *   neither, or its byte length does not match its shape.
 */
export function tensorF32(t: Tensor | undefined, what = "tensor", scratch?: Float32Array): Float32Array {
  if (!t) throw new RangeError(`${what} is missing`);
  if (t.dtype !== DType.DTYPE_F32 && t.dtype !== DType.DTYPE_F16)
    throw new RangeError(`${what}: expected dtype F32 or F16, got ${DType[t.dtype] ?? t.dtype}`);
  const size = t.dtype === DType.DTYPE_F32 ? 4 : 2;
  const n = elements(t.shape);
  if (t.data.byteLength !== n * size) {
    throw new RangeError(
      `${what}: shape [${t.shape.join(", ")}] of ${DType[t.dtype]} needs ${n * size} bytes, got ${t.data.byteLength}`,
    );
  }
  if (t.dtype === DType.DTYPE_F32) {
    if (t.data.byteOffset % 4 === 0) return new Float32Array(t.data.buffer, t.data.byteOffset, n);
    // Unaligned (a field inside a received gRPC message): copy. Not
    // `t.data.slice()`: grpc-js hands us Buffers, whose slice() is a view.
    return new Float32Array(new Uint8Array(t.data).buffer, 0, n);
  }
  const dst = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  if (t.data.byteOffset % 2 === 0) return decodeF16(new Uint16Array(t.data.buffer, t.data.byteOffset, n), dst);
  // Unaligned f16: read the little-endian bytes pairwise.
  const table = f16ToF32Table();
  const u = new Uint32Array(dst.buffer, dst.byteOffset, n);
  const b = t.data;
  for (let i = 0; i < n; i++) u[i] = table[b[2 * i]! | (b[2 * i + 1]! << 8)]!;
  return dst;
}

/** The {@link WireDtype} of a wire tensor's dtype, undefined for anything else. */
export function tensorWireDtype(t: Tensor | undefined): WireDtype | undefined {
  if (t?.dtype === DType.DTYPE_F16) return "f16";
  if (t?.dtype === DType.DTYPE_F32) return "f32";
  return undefined;
}

/**
 * Checks that every value of `values` is a number of magnitude at most
 * `maxAbs` (default: the largest f32, i.e. finite). Decoded wire tensors
 * hold whatever a client sent; NaN, ±inf or huge values in an attention
 * node's q or k make the scores NaN, and the kernels then fail. One pass,
 * no allocation.
 * @throws RangeError naming `what`, the first bad index and its value.
 */
export function checkFiniteValues(values: Float32Array, what: string, maxAbs = F32_MAX): void {
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    // Written so that NaN fails too.
    if (!(x <= maxAbs && x >= -maxAbs)) {
      throw new RangeError(`${what}: value ${x} at index ${i} is not a finite number of magnitude <= ${maxAbs}`);
    }
  }
}

/** The largest finite f32 value. */
const F32_MAX = 3.4028234663852886e38;

/**
 * Largest |value| an attention node accepts in q and k (with
 * {@link checkFiniteValues}): dot products of 2^20 such values stay far
 * below the f32 maximum (1e15^2 x 2^20 is about 1e36), so no attention score
 * overflows. Real activations are many orders of magnitude smaller (f16
 * wire values are at most 65504).
 */
export const QK_MAX_ABS = 1e15;
