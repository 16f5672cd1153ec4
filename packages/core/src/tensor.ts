/**
 * Helpers between typed arrays and the wire `Tensor` message (dtype, shape,
 * raw little-endian bytes). Views are zero-copy where alignment allows.
 */
import { DType, type Tensor, type MessageInitShape, type TensorSchema } from "@tessera/proto";

/** Tensor init for f32 data of `shape`; shares `data`'s memory. */
export function f32Tensor(data: Float32Array, shape: readonly number[]): MessageInitShape<typeof TensorSchema> {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length)
    throw new RangeError(`tensor shape [${shape.join(", ")}] needs ${n} values, got ${data.length}`);
  return {
    dtype: DType.DTYPE_F32,
    shape: [...shape],
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

/**
 * The f32 values of a wire tensor: a view on its bytes when they are 4-byte
 * aligned, else a copy. Throws RangeError when the dtype is not F32 or the
 * byte length does not match the shape.
 */
export function tensorF32(t: Tensor | undefined, what = "tensor"): Float32Array {
  if (!t) throw new RangeError(`${what} is missing`);
  if (t.dtype !== DType.DTYPE_F32)
    throw new RangeError(`${what}: expected dtype F32, got ${DType[t.dtype] ?? t.dtype}`);
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.data.byteLength !== n * 4) {
    throw new RangeError(`${what}: shape [${t.shape.join(", ")}] needs ${n * 4} bytes, got ${t.data.byteLength}`);
  }
  if (t.data.byteOffset % 4 === 0) return new Float32Array(t.data.buffer, t.data.byteOffset, n);
  // Unaligned (a field inside a received gRPC message): copy. Not
  // `t.data.slice()`: grpc-js hands us Buffers, whose slice() is a view.
  return new Float32Array(new Uint8Array(t.data).buffer, 0, n);
}
