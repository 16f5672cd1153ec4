/**
 * The safetensors format (https://github.com/huggingface/safetensors): an
 * 8-byte little-endian unsigned header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`,
 * then the raw little-endian tensor bytes; `data_offsets` are relative to the
 * first byte after the header. Sharded models add `model.safetensors.index.json`
 * (`{"metadata": {...}, "weight_map": {tensor name: shard file name}}`).
 *
 * Tessera reads and writes F32, F16 and BF16. Loading converts F16/BF16 to
 * f32 for now: the gpu-node's graphs and the reference model take f32
 * weights; keeping f16/bf16 weights on the gpu-node is later work (issue 3).
 * Tensors are read one at a time from the file (never the whole file into
 * one Buffer), so files over Node's 2 GiB `readFile` limit load too.
 */
import { open, readFile, stat, writeFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { CheckpointError } from "./errors.js";

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

/** A tensor to write: f32 values, converted to the file's dtype on write. */
export interface SafetensorsTensor {
  name: string;
  shape: readonly number[];
  data: Float32Array;
}

/** Name of the single-file model and of the sharded index in a Hugging Face folder. */
export const SAFETENSORS_MODEL_FILE = "model.safetensors";
export const SAFETENSORS_INDEX_FILE = "model.safetensors.index.json";

// ---------------------------------------------------------------------------
// f16 / bf16 <-> f32 conversion

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits to a number (subnormals, inf and NaN included). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** A float32 value to IEEE binary16 bits, rounding to nearest even; overflow gives ±inf. */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    // Subnormal: shift the mantissa (with its implicit 1) right, round to nearest even.
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // may carry into the exponent: correct, up to inf
  return sign | h;
}

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

/** Little-endian bytes of `data` in `dtype`. */
export function encodeTensor(data: Float32Array, dtype: SafetensorsDtype): Uint8Array {
  const out = new Uint8Array(data.length * SAFETENSORS_DTYPE_BYTES[dtype]);
  const view = new DataView(out.buffer);
  if (dtype === "F32") for (let i = 0; i < data.length; i++) view.setFloat32(4 * i, data[i]!, true);
  else if (dtype === "F16") for (let i = 0; i < data.length; i++) view.setUint16(2 * i, f32ToF16(data[i]!), true);
  else for (let i = 0; i < data.length; i++) view.setUint16(2 * i, f32ToBf16(data[i]!), true);
  return out;
}

/** f32 values of little-endian `bytes` in `dtype`. */
export function decodeTensor(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  const n = bytes.byteLength / SAFETENSORS_DTYPE_BYTES[dtype];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  if (dtype === "F32") for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
  else if (dtype === "F16") for (let i = 0; i < n; i++) out[i] = f16ToF32(view.getUint16(2 * i, true));
  else for (let i = 0; i < n; i++) out[i] = bf16ToF32(view.getUint16(2 * i, true));
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
  return { path, metadata, tensors };
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

/** Reads one tensor of an open file as f32. */
async function readTensorFrom(fh: FileHandle, header: SafetensorsHeader, name: string): Promise<Float32Array> {
  const info = header.tensors.get(name);
  if (!info) throw new CheckpointError(header.path, `has no tensor ${name}`);
  const [begin, end] = info.dataOffsets;
  const bytes = end - begin;
  if (info.dtype === "F32") {
    // Read straight into the result: little-endian hosts need no conversion.
    const out = new Float32Array(bytes / 4);
    const { bytesRead } = await fh.read(new Uint8Array(out.buffer), 0, bytes, header.dataStart + begin);
    if (bytesRead !== bytes)
      throw new CheckpointError(header.path, `truncated inside tensor ${name}`, bytes, bytesRead);
    return out;
  }
  const buf = new Uint8Array(bytes);
  const { bytesRead } = await fh.read(buf, 0, bytes, header.dataStart + begin);
  if (bytesRead !== bytes) throw new CheckpointError(header.path, `truncated inside tensor ${name}`, bytes, bytesRead);
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
 * rounding to nearest even). The header is padded with spaces so the data
 * section starts 8-byte aligned, as the reference writer does.
 * @returns the number of bytes written.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsTensor[],
  options: { dtype?: SafetensorsDtype; metadata?: Record<string, string> } = {},
): Promise<number> {
  const dtype = options.dtype ?? "F32";
  const header: Record<string, unknown> = {};
  if (options.metadata) header["__metadata__"] = options.metadata;
  let offset = 0;
  for (const t of tensors) {
    const elements = t.shape.reduce((a, d) => a * d, 1);
    if (elements !== t.data.length) {
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
    for (const t of tensors) await fh.write(encodeTensor(t.data, dtype));
  } finally {
    await fh.close();
  }
  return 8 + jsonBytes.length + offset;
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
 * @returns the file names written.
 */
export async function writeSafetensorsFolder(
  dir: string,
  tensors: readonly SafetensorsTensor[],
  options: { dtype?: SafetensorsDtype; shardBytes?: number; metadata?: Record<string, string> } = {},
): Promise<string[]> {
  const dtype = options.dtype ?? "F32";
  const limit = options.shardBytes ?? Infinity;
  const shards: SafetensorsTensor[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    const bytes = t.data.length * SAFETENSORS_DTYPE_BYTES[dtype];
    if (size > 0 && size + bytes > limit) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1]!.push(t);
    size += bytes;
  }
  const metadata = { format: "pt", ...options.metadata };
  if (shards.length === 1) {
    await writeSafetensors(join(dir, SAFETENSORS_MODEL_FILE), tensors, { dtype, metadata });
    return [SAFETENSORS_MODEL_FILE];
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < shards.length; i++) {
    await writeSafetensors(join(dir, names[i]!), shards[i]!, { dtype, metadata });
    for (const t of shards[i]!) {
      weightMap[t.name] = names[i]!;
      total += t.data.length * SAFETENSORS_DTYPE_BYTES[dtype];
    }
  }
  await writeFile(
    join(dir, SAFETENSORS_INDEX_FILE),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n",
  );
  return [...names, SAFETENSORS_INDEX_FILE];
}
