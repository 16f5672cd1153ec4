/**
 * The safetensors format (https://github.com/huggingface/safetensors): an
 * 8-byte little-endian unsigned header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`,
 * then the raw little-endian tensor bytes; `data_offsets` are relative to the
 * first byte after the header. Sharded models add `model.safetensors.index.json`
 * (`{"metadata": {...}, "weight_map": {tensor name: shard file name}}`).
 *
 * Tessera reads and writes F32, F16 and BF16. Reading converts F16/BF16 to
 * f32 one tensor at a time (the gpu-node then stores its projection weights
 * as f16 again where its execution provider has f16 kernels: see the
 * gpu-node's DenseModel). Tensors are read with positional reads, one at a
 * time (never the whole file into one Buffer), so files over Node's 2 GiB
 * `readFile` limit load too; writers take tensors as functions to stream
 * models larger than memory.
 */
import { open, readFile, stat, writeFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { CheckpointError, decodeF16, encodeF16 } from "@tessera/core";

/** Element types Tessera reads and writes. */
export type SafetensorsDtype = "F32" | "F16" | "BF16";

/** Bytes per element of each dtype. */
export const SAFETENSORS_DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = { F32: 4, F16: 2, BF16: 2 };

/** One tensor's entry in a safetensors header. */
export interface SafetensorsTensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** [begin, end) in bytes, relative to the start of the data section. */
  dataOffsets: [number, number];
}

/** A parsed safetensors header. */
export interface SafetensorsHeader {
  path: string;
  /** Absolute file offset of the data section: 8 + header length. */
  dataStart: number;
  /** Total file size in bytes. */
  fileBytes: number;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsTensorInfo>;
}

/**
 * A tensor to write: f32 values, converted to the file's dtype on write.
 * `data` may be a function producing them, called once when the tensor's
 * turn comes, so a writer holds one tensor at a time (streaming writes of
 * models larger than memory).
 */
export interface SafetensorsTensor {
  name: string;
  shape: readonly number[];
  data: Float32Array | (() => Float32Array | Promise<Float32Array>);
}

/** Options of the safetensors writers. */
export interface SafetensorsWriteOptions {
  /** Element type written. @default "F32" */
  dtype?: SafetensorsDtype;
  /** `__metadata__` strings. */
  metadata?: Record<string, string>;
  /** Called after each tensor is written with the bytes of tensor data written by this call so far. */
  onProgress?: (bytesWritten: number) => void;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, d) => a * d, 1);
}

/** Name of the single-file model in a Hugging Face folder. */
export const SAFETENSORS_MODEL_FILE = "model.safetensors";
/**
 * Name of the index of a sharded model in a Hugging Face folder:
 * `{"metadata": {...}, "weight_map": {tensor name: shard file name}}`.
 */
export const SAFETENSORS_INDEX_FILE = "model.safetensors.index.json";

// ---------------------------------------------------------------------------
// bf16 <-> f32 conversion (f16: the wire codec of tensor.ts)

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bfloat16 bits to a number (the top half of a float32). */
export function bf16ToF32(b: number): number {
  u32Scratch[0] = (b & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** A float32 value to bfloat16 bits, rounding to nearest even (NaN stays NaN). */
export function f32ToBf16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Little-endian bytes of `data` in `dtype`, a new buffer. F16 is rounded to
 * nearest even by the wire codec ({@link encodeF16}); BF16 to nearest even
 * as {@link f32ToBf16}, on the f32 bit patterns in bulk (the host is
 * little-endian, as onnxruntime-node requires).
 */
export function encodeTensor(data: Float32Array, dtype: SafetensorsDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.slice().buffer);
  const n = data.length;
  const out = new Uint16Array(n);
  if (dtype === "F16") return new Uint8Array(encodeF16(data, out).buffer);
  const bits = new Uint32Array(data.buffer, data.byteOffset, n); // a Float32Array is always 4-byte aligned
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    out[i] =
      (x & 0x7f800000) === 0x7f800000 && x & 0x7fffff ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return new Uint8Array(out.buffer);
}

/**
 * f32 values of little-endian `bytes` in `dtype`, a new array (F16 via the
 * wire codec, {@link decodeF16}). `bytes` may sit at any offset: unaligned
 * ones are copied first (a Node Buffer's `slice()` is a view, so this copies
 * with `new Uint8Array(bytes)`).
 * @throws RangeError when the byte length is not a whole number of values.
 */
export function decodeTensor(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  const width = SAFETENSORS_DTYPE_BYTES[dtype];
  if (bytes.byteLength % width !== 0)
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} values`);
  const n = bytes.byteLength / width;
  const aligned = bytes.byteOffset % width === 0 ? bytes : new Uint8Array(bytes);
  if (dtype === "F32") return new Float32Array(aligned.buffer.slice(aligned.byteOffset, aligned.byteOffset + 4 * n));
  const h = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
  const out = new Float32Array(n);
  if (dtype === "F16") return decodeF16(h, out);
  const o = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) o[i] = h[i]! << 16;
  return out;
}

// ---------------------------------------------------------------------------
// Single files

/** Largest header we accept (the reference implementation's limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

function parseHeaderJson(
  path: string,
  json: string,
  dataBytes: number,
): Omit<SafetensorsHeader, "dataStart" | "fileBytes"> {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    throw new CheckpointError(
      path,
      `safetensors header is not valid JSON: ${(err as Error).message}`,
      undefined,
      undefined,
      {
        cause: err,
      },
    );
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new CheckpointError(path, "safetensors header is not a JSON object");
  }
  const tensors = new Map<string, SafetensorsTensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e.dtype !== "F32" && e.dtype !== "F16" && e.dtype !== "BF16") {
      throw new CheckpointError(path, `tensor ${name} has dtype ${String(e.dtype)}; only F32, F16 and BF16 are read`);
    }
    const shape = e.shape;
    const offsets = e.data_offsets;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new CheckpointError(path, `tensor ${name} has a bad shape ${JSON.stringify(shape)}`);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isInteger(o) && o >= 0) ||
      offsets[1] < offsets[0]
    ) {
      throw new CheckpointError(path, `tensor ${name} has bad data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    const elements = (shape as number[]).reduce((a, d) => a * d, 1);
    if (!Number.isSafeInteger(elements * SAFETENSORS_DTYPE_BYTES[e.dtype])) {
      throw new CheckpointError(path, `tensor ${name} has a shape too large to be in a file`);
    }
    if (end - begin !== elements * SAFETENSORS_DTYPE_BYTES[e.dtype]) {
      throw new CheckpointError(
        path,
        `tensor ${name}: ${e.dtype} [${(shape as number[]).join(", ")}] needs ${elements * SAFETENSORS_DTYPE_BYTES[e.dtype]} bytes but data_offsets span ${end - begin}`,
      );
    }
    if (end > dataBytes) {
      throw new CheckpointError(path, `tensor ${name} ends past the end of the file (truncated?)`, end, dataBytes);
    }
    tensors.set(name, { dtype: e.dtype, shape: shape as number[], dataOffsets: [begin, end] });
  }
  checkNoOverlap(path, tensors);
  return { path, metadata, tensors };
}

/**
 * Refuses tensors whose data_offsets overlap (two tensors sharing bytes read
 * as each other's weights); empty tensors overlap nothing.
 * @throws CheckpointError naming the file, both tensors and data_offsets.
 */
function checkNoOverlap(path: string, tensors: ReadonlyMap<string, SafetensorsTensorInfo>): void {
  const spans = [...tensors]
    .filter(([, t]) => t.dataOffsets[1] > t.dataOffsets[0])
    .sort(([, a], [, b]) => a.dataOffsets[0] - b.dataOffsets[0]);
  let last: [string, SafetensorsTensorInfo] | undefined; // the span reaching furthest so far
  for (const [name, b] of spans) {
    if (last && b.dataOffsets[0] < last[1].dataOffsets[1]) {
      throw new CheckpointError(
        path,
        `tensor ${name} data_offsets [${b.dataOffsets.join(", ")}] overlap tensor ${last[0]}'s [${last[1].dataOffsets.join(", ")}]`,
      );
    }
    if (!last || b.dataOffsets[1] > last[1].dataOffsets[1]) last = [name, b];
  }
}

async function openOrThrow(path: string): Promise<FileHandle> {
  try {
    return await open(path, "r");
  } catch (err) {
    throw new CheckpointError(path, `cannot read safetensors file: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
  }
}

async function readHeaderFrom(path: string, fh: FileHandle): Promise<SafetensorsHeader> {
  const fileBytes = (await fh.stat()).size;
  if (fileBytes < 8) throw new CheckpointError(path, "too small for a safetensors header", 8, fileBytes);
  const lenBuf = Buffer.alloc(8);
  await fh.read(lenBuf, 0, 8, 0);
  const n = Number(lenBuf.readBigUInt64LE(0));
  if (n > MAX_HEADER_BYTES)
    throw new CheckpointError(path, `safetensors header length ${n} is implausible; not a safetensors file?`);
  if (8 + n > fileBytes) throw new CheckpointError(path, "file ends inside the safetensors header", 8 + n, fileBytes);
  const json = Buffer.alloc(n);
  await fh.read(json, 0, n, 8);
  const parsed = parseHeaderJson(path, json.toString("utf8"), fileBytes - 8 - n);
  return { ...parsed, dataStart: 8 + n, fileBytes };
}

/**
 * Reads and validates a safetensors file's header (dtypes, shapes, offsets
 * inside the file) without reading tensor data.
 * @throws CheckpointError naming the file when it is missing, truncated or its header is bad.
 */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const fh = await openOrThrow(path);
  try {
    return await readHeaderFrom(path, fh);
  } finally {
    await fh.close();
  }
}

/** Largest single positional read: Node's fs rejects reads over 2 GiB - 1. */
const MAX_READ_BYTES = 1 << 30;

/**
 * Fills `into` from `fh` at file offset `position` with positional reads of
 * at most 1 GiB each (so tensors and files over 2 GiB read too).
 * @throws CheckpointError naming `path` and `what` when the file ends first.
 */
export async function readFully(
  fh: FileHandle,
  path: string,
  into: Uint8Array,
  position: number,
  what: string,
): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const len = Math.min(MAX_READ_BYTES, into.byteLength - done);
    const { bytesRead } = await fh.read(into, done, len, position + done);
    if (bytesRead === 0) throw new CheckpointError(path, `truncated inside ${what}`, into.byteLength, done);
    done += bytesRead;
  }
}

/** Reads one tensor of an open file as f32 (F16/BF16 converted; one transient buffer of the stored bytes). */
async function readTensorFrom(fh: FileHandle, header: SafetensorsHeader, name: string): Promise<Float32Array> {
  const info = header.tensors.get(name);
  if (!info) throw new CheckpointError(header.path, `has no tensor ${name}`);
  const [begin, end] = info.dataOffsets;
  const bytes = end - begin;
  if (info.dtype === "F32") {
    // Read straight into the result: little-endian hosts need no conversion.
    const out = new Float32Array(bytes / 4);
    await readFully(fh, header.path, new Uint8Array(out.buffer), header.dataStart + begin, `tensor ${name}`);
    return out;
  }
  const buf = new Uint8Array(bytes);
  await readFully(fh, header.path, buf, header.dataStart + begin, `tensor ${name}`);
  return decodeTensor(buf, info.dtype);
}

/**
 * Reads every tensor of a safetensors file as f32 (F16/BF16 converted).
 * @throws CheckpointError as {@link readSafetensorsHeader}.
 */
export async function readSafetensors(path: string): Promise<{
  metadata: Record<string, string>;
  tensors: Map<string, { dtype: SafetensorsDtype; shape: number[]; data: Float32Array }>;
}> {
  const fh = await openOrThrow(path);
  try {
    const header = await readHeaderFrom(path, fh);
    const tensors = new Map<string, { dtype: SafetensorsDtype; shape: number[]; data: Float32Array }>();
    for (const [name, info] of header.tensors) {
      tensors.set(name, { dtype: info.dtype, shape: info.shape, data: await readTensorFrom(fh, header, name) });
    }
    return { metadata: header.metadata, tensors };
  } finally {
    await fh.close();
  }
}

/**
 * Writes `tensors` to one safetensors file in `dtype` (f32 values converted,
 * rounding to nearest even), producing and encoding one tensor at a time.
 * The header is padded with spaces so the data section starts 8-byte
 * aligned, as the reference writer does.
 * @returns the number of bytes written.
 * @throws RangeError when a tensor's data length does not match its shape.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsTensor[],
  options: SafetensorsWriteOptions = {},
): Promise<number> {
  const dtype = options.dtype ?? "F32";
  const header: Record<string, unknown> = {};
  if (options.metadata) header["__metadata__"] = options.metadata;
  let offset = 0;
  for (const t of tensors) {
    const elements = elementCount(t.shape);
    if (typeof t.data !== "function" && elements !== t.data.length) {
      throw new RangeError(
        `${t.name}: shape [${t.shape.join(", ")}] has ${elements} elements, data has ${t.data.length}`,
      );
    }
    const bytes = elements * SAFETENSORS_DTYPE_BYTES[dtype];
    header[t.name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const jsonBytes = Buffer.from(json, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(jsonBytes.length));
  const fh = await open(path, "w");
  try {
    await fh.write(len);
    await fh.write(jsonBytes);
    let written = 0;
    for (const t of tensors) {
      const data = typeof t.data === "function" ? await t.data() : t.data;
      const elements = elementCount(t.shape);
      if (data.length !== elements) {
        throw new RangeError(
          `${t.name}: shape [${t.shape.join(", ")}] has ${elements} elements, data has ${data.length}`,
        );
      }
      const encoded = encodeTensor(data, dtype);
      await writeAll(fh, encoded);
      written += encoded.byteLength;
      options.onProgress?.(written);
    }
  } finally {
    await fh.close();
  }
  return 8 + jsonBytes.length + offset;
}

/** Writes all of `bytes` at the file's current position, in pieces of at most 1 GiB. */
async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) {
    const { bytesWritten } = await fh.write(bytes, at, Math.min(MAX_READ_BYTES, bytes.byteLength - at));
    at += bytesWritten;
  }
}

// ---------------------------------------------------------------------------
// Folders: model.safetensors or a sharded index

/** The tensors of a Hugging Face folder, across its shard files. */
export interface SafetensorsStore {
  /** The folder. */
  dir: string;
  /** Shard file headers, by file name. */
  files: Map<string, SafetensorsHeader>;
  /** Tensor name → shard file name. */
  weightMap: Map<string, string>;
  /** Sum of the shard files' sizes in bytes. */
  totalBytes: number;
  /** Info of `name`, or undefined when no shard has it. */
  info(name: string): SafetensorsTensorInfo | undefined;
  /**
   * Reads tensor `name` as f32; checks its shape when `shape` is given.
   * @throws CheckpointError naming the shard file when the tensor is missing or has another shape.
   */
  read(name: string, shape?: readonly number[]): Promise<Float32Array>;
}

/**
 * Opens the safetensors of a Hugging Face folder: `model.safetensors.index.json`
 * (its `weight_map`) when present, else `model.safetensors`. Reads every
 * shard's header up front, so a missing or truncated shard fails here.
 * @throws CheckpointError naming the file that is missing, unreadable or inconsistent.
 */
export async function openSafetensorsFolder(dir: string): Promise<SafetensorsStore> {
  const indexPath = join(dir, SAFETENSORS_INDEX_FILE);
  const files = new Map<string, SafetensorsHeader>();
  const weightMap = new Map<string, string>();
  let indexText: string | undefined;
  try {
    indexText = await readFile(indexPath, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new CheckpointError(indexPath, `cannot read: ${(err as Error).message}`, undefined, undefined, {
        cause: err,
      });
    }
  }
  if (indexText !== undefined) {
    let map: unknown;
    try {
      map = (JSON.parse(indexText) as { weight_map?: unknown }).weight_map;
    } catch (err) {
      throw new CheckpointError(indexPath, `is not valid JSON: ${(err as Error).message}`, undefined, undefined, {
        cause: err,
      });
    }
    if (typeof map !== "object" || map === null) throw new CheckpointError(indexPath, "has no weight_map object");
    for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
      if (typeof file !== "string" || file !== basename(file)) {
        throw new CheckpointError(
          indexPath,
          `weight_map entry ${name} names ${JSON.stringify(file)}, not a file in the folder`,
        );
      }
      weightMap.set(name, file);
    }
    for (const file of new Set(weightMap.values())) files.set(file, await readSafetensorsHeader(join(dir, file)));
    for (const [name, file] of weightMap) {
      if (!files.get(file)!.tensors.has(name)) {
        throw new CheckpointError(
          join(dir, file),
          `has no tensor ${name}, which ${SAFETENSORS_INDEX_FILE} places there`,
        );
      }
    }
  } else {
    const path = join(dir, SAFETENSORS_MODEL_FILE);
    try {
      await stat(path);
    } catch (err) {
      throw new CheckpointError(
        dir,
        `has neither ${SAFETENSORS_MODEL_FILE} nor ${SAFETENSORS_INDEX_FILE}`,
        undefined,
        undefined,
        { cause: err },
      );
    }
    const header = await readSafetensorsHeader(path);
    files.set(SAFETENSORS_MODEL_FILE, header);
    for (const name of header.tensors.keys()) weightMap.set(name, SAFETENSORS_MODEL_FILE);
  }
  const totalBytes = [...files.values()].reduce((a, h) => a + h.fileBytes, 0);
  return {
    dir,
    files,
    weightMap,
    totalBytes,
    info(name) {
      const file = weightMap.get(name);
      return file === undefined ? undefined : files.get(file)!.tensors.get(name);
    },
    async read(name, shape) {
      const file = weightMap.get(name);
      if (file === undefined) {
        const where = indexText !== undefined ? SAFETENSORS_INDEX_FILE : SAFETENSORS_MODEL_FILE;
        throw new CheckpointError(join(dir, where), `has no tensor ${name}`);
      }
      const header = files.get(file)!;
      const info = header.tensors.get(name)!;
      if (shape && (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i]))) {
        throw new CheckpointError(
          header.path,
          `tensor ${name} has shape [${info.shape.join(", ")}], expected [${shape.join(", ")}] from config.json`,
        );
      }
      const fh = await openOrThrow(header.path);
      try {
        return await readTensorFrom(fh, header, name);
      } finally {
        await fh.close();
      }
    },
  };
}

/**
 * Writes `tensors` into folder `dir` as `model.safetensors`, or, when they
 * exceed `shardBytes`, as `model-0000i-of-0000n.safetensors` shards plus
 * `model.safetensors.index.json` (the layout `transformers`' `save_pretrained` writes).
 * Tensors given as functions are produced one at a time (see {@link SafetensorsTensor}).
 * @returns the file names written.
 * @throws RangeError when a tensor's data length does not match its shape.
 */
export async function writeSafetensorsFolder(
  dir: string,
  tensors: readonly SafetensorsTensor[],
  options: SafetensorsWriteOptions & { shardBytes?: number } = {},
): Promise<string[]> {
  const dtype = options.dtype ?? "F32";
  const limit = options.shardBytes ?? Infinity;
  const bytesOf = (t: SafetensorsTensor) => elementCount(t.shape) * SAFETENSORS_DTYPE_BYTES[dtype];
  const shards: SafetensorsTensor[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    const bytes = bytesOf(t);
    if (size > 0 && size + bytes > limit) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1]!.push(t);
    size += bytes;
  }
  const metadata = { format: "pt", ...options.metadata };
  let before = 0;
  const write = async (file: string, shard: SafetensorsTensor[]) => {
    const base = before;
    await writeSafetensors(join(dir, file), shard, {
      dtype,
      metadata,
      ...(options.onProgress ? { onProgress: (n: number) => options.onProgress!(base + n) } : {}),
    });
    before += shard.reduce((a, t) => a + bytesOf(t), 0);
  };
  if (shards.length === 1) {
    await write(SAFETENSORS_MODEL_FILE, shards[0]!);
    return [SAFETENSORS_MODEL_FILE];
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards.length; i++) {
    await write(names[i]!, shards[i]!);
    for (const t of shards[i]!) weightMap[t.name] = names[i]!;
  }
  await writeFile(
    join(dir, SAFETENSORS_INDEX_FILE),
    JSON.stringify({ metadata: { total_size: before }, weight_map: weightMap }, null, 2) + "\n",
  );
  return [...names, SAFETENSORS_INDEX_FILE];
}
