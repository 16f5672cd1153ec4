/**
 * The storage-node's KV cache on disk.
 *
 * Layout under `dataDir`:
 * ```
 * dataDir/
 *   seq-<encoded id>/          one directory per sequence (see sequenceDirName)
 *     manifest.json            the index: format, version, seq id, layout,
 *                              max_positions, block_positions, dtype, the
 *                              committed length of every layer and the
 *                              CRC-32 of each of its blocks (block-crc.ts)
 *     layer-0000.kv            one file per layer, made of fixed-size blocks
 *     layer-0001.kv            ...
 * ```
 * A layer file is a sequence of fixed-size blocks of `blockPositions`
 * positions; block b starts at byte b x blockBytes. Inside a block the data
 * is position-major: for each position its K row ([n_kv_heads, head_dim]
 * f32 little-endian, rowBytes = n_kv_heads x head_dim x 4) then its V row.
 * So position p lives at byte p x 2 x rowBytes, any run of positions is one
 * contiguous range (one write per appended run, one read per chunk), and
 * reading whole blocks in order reads the file sequentially. Attention reads
 * chunks of whole blocks when the buffer holds at least one block. Files
 * grow as positions are written.
 *
 * Committed length: `manifest.json` records, per layer, how many positions
 * [0, n) are stored. It is replaced atomically (write manifest.json.tmp,
 * fsync it, rename over manifest.json, fsync the directory), so a crash
 * leaves either the old or the new manifest, never a torn one. Bytes written
 * past a layer's committed length (a step that was cut short) are ignored
 * and overwritten when that step is retried.
 *
 * The manifest is replaced once per step of a sequence, not once per layer:
 * when a request writes the sequence's last layer (and when the node closes,
 * for anything not yet recorded). A replace cost ~1.5-2 ms on the ext4 disk
 * we measured, whatever the fsync policy (ext4's rename-over-existing
 * heuristic flushes the new file), so per-layer replaces would cost n_layers
 * times that per token. Nothing is
 * lost by it: the length a node reports after a restart is the minimum over
 * layers, and a step cut short before its last layer leaves that minimum at
 * the previous step either way; the retried step overwrites the rows the
 * first attempt wrote.
 *
 * Durability (fsync policy):
 * - "always" (default): before Attend answers, the request's K/V rows are
 *   written with positional writes and the layer file is fdatasync'ed; when
 *   the request wrote a sequence's last layer, the manifest recording the
 *   whole step is replaced (and fsync'ed, as above) before it answers too.
 *   So once the last layer of a step has been answered, that step survives
 *   a crash or a power loss, and a restarted node counts it in the length.
 * - "never": the same writes and renames without fsync; the OS flushes when
 *   it likes. A killed process loses no step it answered (the page cache
 *   survives it); a power loss may lose recent positions (a manifest may
 *   then claim rows that read as zeros: their blocks fail their CRC on
 *   read, and the coordinator rebuilds the sequence).
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readFile, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { Code } from "@tessera/proto";
import type { AttendTarget, KvLayoutDims } from "@tessera/attention";
import { TesseraError } from "@tessera/core";
import { UNKNOWN_CRC, blockCrc, type BadBlock } from "./block-crc.js";

/** Name of the index file in a sequence directory. */
export const MANIFEST_FILE = "manifest.json";
/** Value of the manifest's `format` field. */
export const MANIFEST_FORMAT = "tessera-kv";
/** Version of the on-disk format this code reads and writes. */
export const MANIFEST_VERSION = 1;

/** When written K/V and manifests are forced to disk; see the file comment. */
export type FsyncPolicy = "always" | "never";

/**
 * A sequence's files are missing, corrupt or inconsistent, or an I/O on
 * them failed. Names the file. Crosses gRPC as DATA_LOSS unless told
 * otherwise (I/O errors: see {@link ioError}): the cache of that one
 * sequence cannot be used (the caller may CloseSequence it, which deletes
 * its files, and start again); other sequences are not affected.
 */
export class KvStoreError extends TesseraError {
  override name = "KvStoreError";
  /**
   * @param path the file (or directory) at fault.
   * @param detail what is wrong with it.
   * @param options.context prefixed to the message, e.g. which node and sequence.
   * @param options.code gRPC status code it crosses as. @default DATA_LOSS
   */
  constructor(
    readonly path: string,
    readonly detail: string,
    options?: { cause?: unknown; context?: string; code?: Code },
  ) {
    super(`${options?.context ? `${options.context}: ` : ""}${path}: ${detail}`, options);
    this.rpcCode = options?.code ?? Code.DATA_LOSS;
  }
}

/**
 * The gRPC code of a failed file-system call, by its errno code:
 * - ENOSPC, EDQUOT, EFBIG (disk or quota full, file too large):
 *   RESOURCE_EXHAUSTED. Nothing is wrong with the data; the node is out of
 *   disk, as when a sequence does not fit its capacity.
 * - EIO (the device failed a read or write), ENOENT (the sequence's
 *   directory or file was deleted under the node): DATA_LOSS. What the
 *   sequence holds can no longer be trusted.
 * - anything else (EBADF, EACCES, ...): INTERNAL, a fault of the node.
 */
export function ioErrorCode(err: unknown): Code {
  switch ((err as NodeJS.ErrnoException | undefined)?.code) {
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return Code.RESOURCE_EXHAUSTED;
    case "EIO":
    case "ENOENT":
      return Code.DATA_LOSS;
    default:
      return Code.INTERNAL;
  }
}

/**
 * Wraps an error of a file-system call on `path` (a FileHandle's write,
 * read or sync say nothing of the file) in a {@link KvStoreError} naming it
 * and the operation, with the code {@link ioErrorCode} gives. A
 * KvStoreError is returned as it is.
 */
export function ioError(path: string, op: string, err: unknown): KvStoreError {
  if (err instanceof KvStoreError) return err;
  return new KvStoreError(path, `${op} failed: ${err instanceof Error ? err.message : String(err)}`, {
    cause: err,
    code: ioErrorCode(err),
  });
}

/** Runs `io`, an operation `op` on `path`; rethrows its error as {@link ioError} does. */
async function onFile<T>(path: string, op: string, io: () => Promise<T>): Promise<T> {
  try {
    return await io();
  } catch (err) {
    throw ioError(path, op, err);
  }
}

/** What manifest.json holds. */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  seqId: string;
  layout: KvLayoutDims;
  maxPositions: number;
  blockPositions: number;
  dtype: "f32";
  /** Committed positions [0, n) per layer. */
  layerLengths: number[];
  /**
   * Per layer, the CRC-32 of each block's committed positions
   * (ceil(length / blockPositions) of them; null: not known). Absent in
   * manifests written before checksums: their blocks are read unchecked.
   */
  blockCrcs?: (number | null)[][];
}

/**
 * Directory name of a sequence: "seq-" then the id's UTF-8 bytes, with
 * [a-z0-9_-] kept and every other byte (uppercase letters, '.', '/', '%', ...)
 * written %xx in lowercase hex. Distinct ids get distinct names, safe on any
 * file system (no separators, never "." or ".."), distinct even on
 * case-insensitive ones. Ids longer than ~180 encoded bytes keep a prefix and
 * a SHA-256 of the whole id, to fit file-name limits; the manifest keeps the
 * id itself either way.
 */
export function sequenceDirName(seqId: string): string {
  let enc = "";
  for (const byte of Buffer.from(seqId, "utf8")) {
    const keep = (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte === 0x5f || byte === 0x2d;
    enc += keep ? String.fromCharCode(byte) : "%" + byte.toString(16).padStart(2, "0");
  }
  if (enc.length > 180) enc = `${enc.slice(0, 100)}~${createHash("sha256").update(seqId, "utf8").digest("hex")}`;
  return `seq-${enc}`;
}

/** File name of layer `layer`'s K/V blocks. */
export function layerFileName(layer: number): string {
  return `layer-${String(layer).padStart(4, "0")}.kv`;
}

/** Byte geometry of one sequence's layer files. */
export interface BlockGeometry {
  readonly blockPositions: number;
  /** Bytes of one position's K (or V) row: n_kv_heads x head_dim x 4. */
  readonly rowBytes: number;
  /** Bytes of one position: its K row then its V row. */
  readonly positionBytes: number;
  /** Bytes of one block: blockPositions x positionBytes. */
  readonly blockBytes: number;
}

/** Byte offset of position `pos` (its K row; its V row follows) in a layer file. */
export function positionOffset(g: BlockGeometry, pos: number): number {
  return pos * g.positionBytes;
}

/** Smallest layer file size that holds positions [0, length). */
export function bytesForLength(g: BlockGeometry, length: number): number {
  return length * g.positionBytes;
}

/** One sequence's open files and state. */
export interface StoredSequence extends AttendTarget {
  readonly id: string;
  readonly dir: string;
  readonly layout: KvLayoutDims;
  readonly maxPositions: number;
  readonly geometry: BlockGeometry;
  readonly reservedBytes: number;
  /** Positions written per layer (in memory; durable under fsync "always"). */
  readonly lengths: number[];
  /** Per layer, the CRC-32 of each block's committed positions (block-crc.ts); updated with `lengths`. */
  readonly crcs: number[][];
  /** Lengths the manifest on disk records (lags `lengths` by less than a step). */
  recorded: number[];
  /** Per layer, opened read-write; positional reads and writes only. */
  readonly files: FileHandle[];
  /** The sequence directory, kept open to fsync renames in it. */
  readonly dirHandle: FileHandle;
  /** Manifest writes run one at a time, in order. */
  manifestChain: Promise<void>;
  /** A write that has not started yet: later commits ride on it. */
  queuedManifest: Promise<void> | undefined;
}

/** Length of a sequence: the positions every layer holds (minimum over layers). */
export function sequenceLength(seq: StoredSequence): number {
  return seq.lengths.reduce((a, b) => Math.min(a, b), Number.MAX_SAFE_INTEGER);
}

function geometryOf(layout: KvLayoutDims, blockPositions: number): BlockGeometry {
  const rowBytes = layout.nKvHeads * layout.headDim * 4;
  return { blockPositions, rowBytes, positionBytes: 2 * rowBytes, blockBytes: 2 * blockPositions * rowBytes };
}

function manifestOf(seq: StoredSequence): Manifest {
  return {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    seqId: seq.id,
    layout: { ...seq.layout },
    maxPositions: seq.maxPositions,
    blockPositions: seq.geometry.blockPositions,
    dtype: "f32",
    layerLengths: [...seq.lengths],
    blockCrcs: seq.crcs.map((l) => l.map((c) => (c === UNKNOWN_CRC ? null : c))),
  };
}

/** Opens (creating if needed) a file for positional reads and writes; never O_APPEND, which would ignore positions. */
function openReadWrite(path: string): Promise<FileHandle> {
  return open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
}

/** Opens a directory so it can be fsync'ed after renames in it. */
export function openDir(path: string): Promise<FileHandle> {
  return open(path, constants.O_RDONLY | (constants.O_DIRECTORY ?? 0));
}

async function writeManifestNow(seq: StoredSequence, fsync: FsyncPolicy): Promise<void> {
  const path = join(seq.dir, MANIFEST_FILE);
  const tmp = `${path}.tmp`;
  const manifest = manifestOf(seq);
  const fh = await onFile(tmp, "open", () => open(tmp, "w", 0o644));
  try {
    await onFile(tmp, "write", () => fh.writeFile(JSON.stringify(manifest, null, 1) + "\n"));
    if (fsync === "always") await onFile(tmp, "fsync", () => fh.sync());
  } finally {
    await fh.close();
  }
  await onFile(path, "rename", () => rename(tmp, path));
  if (fsync === "always") await onFile(seq.dir, "fsync", () => seq.dirHandle.sync());
  seq.recorded = manifest.layerLengths;
}

/** True when the manifest on disk is behind the in-memory lengths. */
export function manifestBehind(seq: StoredSequence): boolean {
  return seq.lengths.some((n, l) => n !== seq.recorded[l]);
}

/**
 * Records the in-memory committed lengths in the manifest (atomically, see
 * the file comment). Concurrent callers share a write that has not started,
 * so a burst of commits costs one write after the current one.
 */
export function commitManifest(seq: StoredSequence, fsync: FsyncPolicy): Promise<void> {
  if (seq.queuedManifest) return seq.queuedManifest;
  const p = seq.manifestChain.then(() => {
    seq.queuedManifest = undefined;
    return writeManifestNow(seq, fsync);
  });
  seq.queuedManifest = p;
  seq.manifestChain = p.catch(() => undefined);
  return p;
}

/**
 * Creates a new sequence's directory, empty layer files and manifest, all
 * durable when `fsync` is "always".
 * @throws Error from the file system (e.g. ENOSPC), or KvStoreError (see
 *   {@link ioError}), naming the path.
 */
export async function createSequence(
  dataDir: string,
  seqId: string,
  layout: KvLayoutDims,
  maxPositions: number,
  blockPositions: number,
  reservedBytes: number,
  fsync: FsyncPolicy,
): Promise<StoredSequence> {
  const dir = join(dataDir, sequenceDirName(seqId));
  // A directory left by a create that crashed before its manifest landed is
  // garbage: start clean.
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir);
  const files: FileHandle[] = [];
  let dirHandle: FileHandle | undefined;
  try {
    for (let l = 0; l < layout.nLayers; l++) files.push(await openReadWrite(join(dir, layerFileName(l))));
    dirHandle = await openDir(dir);
    const seq = newSequence(
      seqId,
      dir,
      layout,
      maxPositions,
      geometryOf(layout, blockPositions),
      reservedBytes,
      new Array<number>(layout.nLayers).fill(0),
      Array.from({ length: layout.nLayers }, () => []),
      files,
      dirHandle,
    );
    await commitManifest(seq, fsync);
    if (fsync === "always") await syncDir(dataDir);
    return seq;
  } catch (err) {
    await Promise.allSettled([...files, ...(dirHandle ? [dirHandle] : [])].map((f) => f.close()));
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function newSequence(
  id: string,
  dir: string,
  layout: KvLayoutDims,
  maxPositions: number,
  geometry: BlockGeometry,
  reservedBytes: number,
  lengths: number[],
  crcs: number[][],
  files: FileHandle[],
  dirHandle: FileHandle,
): StoredSequence {
  return {
    id,
    dir,
    layout: Object.freeze({
      nLayers: layout.nLayers,
      nHeads: layout.nHeads,
      nKvHeads: layout.nKvHeads,
      headDim: layout.headDim,
    }),
    maxPositions,
    geometry,
    reservedBytes,
    lengths,
    crcs,
    recorded: [...lengths],
    files,
    dirHandle,
    manifestChain: Promise.resolve(),
    queuedManifest: undefined,
    layerLength: (layer) => lengths[layer] ?? 0,
  };
}

/** fsync a directory (so entries created or renamed in it are durable). */
export async function syncDir(path: string): Promise<void> {
  const fh = await openDir(path);
  try {
    await onFile(path, "fsync", () => fh.sync());
  } finally {
    await fh.close();
  }
}

const isPositiveInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1;

/**
 * Parses and checks a manifest's fields.
 * @throws KvStoreError naming `path` and the bad field.
 */
export function parseManifest(path: string, text: string): Manifest {
  let m: Partial<Manifest>;
  try {
    m = JSON.parse(text) as Partial<Manifest>;
  } catch (err) {
    throw new KvStoreError(path, `corrupt manifest: ${(err as Error).message}`, { cause: err });
  }
  const bad = (what: string) => new KvStoreError(path, `corrupt manifest: ${what}`);
  if (typeof m !== "object" || m === null) throw bad("not a JSON object");
  if (m.format !== MANIFEST_FORMAT) throw bad(`format is ${JSON.stringify(m.format)}, expected "${MANIFEST_FORMAT}"`);
  if (m.version !== MANIFEST_VERSION)
    throw bad(`unsupported version ${JSON.stringify(m.version)} (this node reads ${MANIFEST_VERSION})`);
  if (typeof m.seqId !== "string" || m.seqId.length === 0) throw bad("seqId is missing");
  const L = m.layout;
  if (
    !L ||
    !isPositiveInt(L.nLayers) ||
    !isPositiveInt(L.nHeads) ||
    !isPositiveInt(L.nKvHeads) ||
    !isPositiveInt(L.headDim) ||
    L.nHeads % L.nKvHeads !== 0
  ) {
    throw bad(`layout ${JSON.stringify(L)} is not a KV layout`);
  }
  if (!isPositiveInt(m.maxPositions)) throw bad(`maxPositions ${JSON.stringify(m.maxPositions)}`);
  if (!isPositiveInt(m.blockPositions)) throw bad(`blockPositions ${JSON.stringify(m.blockPositions)}`);
  if (m.dtype !== "f32") throw bad(`dtype ${JSON.stringify(m.dtype)}, expected "f32"`);
  const lens = m.layerLengths;
  if (
    !Array.isArray(lens) ||
    lens.length !== L.nLayers ||
    !lens.every((n) => Number.isInteger(n) && n >= 0 && n <= m.maxPositions!)
  ) {
    throw bad(`layerLengths ${JSON.stringify(lens)} must be ${L.nLayers} integers in [0, ${m.maxPositions}]`);
  }
  const crcs = m.blockCrcs;
  const isCrc = (c: unknown) => c === null || (Number.isInteger(c) && (c as number) >= 0 && (c as number) < 2 ** 32);
  if (
    crcs !== undefined &&
    (!Array.isArray(crcs) ||
      crcs.length !== L.nLayers ||
      !crcs.every((l, i) => Array.isArray(l) && l.length === Math.ceil(lens[i]! / m.blockPositions!) && l.every(isCrc)))
  ) {
    throw bad(`blockCrcs must hold, per layer, one CRC-32 (or null) per block of its committed positions`);
  }
  return m as Manifest;
}

/**
 * Opens the sequence stored in `dir`: reads and checks its manifest, checks
 * every layer file holds the committed positions, opens the files.
 * @throws KvStoreError naming the missing/corrupt/short file.
 */
export async function loadSequence(dir: string, reservedBytesOf: (m: Manifest) => number): Promise<StoredSequence> {
  const path = join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    const why =
      (err as NodeJS.ErrnoException).code === "ENOENT"
        ? "manifest is missing"
        : `cannot read manifest: ${(err as Error).message}`;
    throw new KvStoreError(path, why, { cause: err });
  }
  const m = parseManifest(path, text);
  if (sequenceDirName(m.seqId) !== basename(dir)) {
    throw new KvStoreError(
      path,
      `manifest names sequence ${JSON.stringify(m.seqId)}, which belongs in ${sequenceDirName(m.seqId)}`,
    );
  }
  const geometry = geometryOf(m.layout, m.blockPositions);
  const files: FileHandle[] = [];
  try {
    for (let l = 0; l < m.layout.nLayers; l++) {
      const file = join(dir, layerFileName(l));
      const need = bytesForLength(geometry, m.layerLengths[l]!);
      let size: number;
      try {
        size = (await stat(file)).size;
      } catch (err) {
        throw new KvStoreError(file, `layer file is missing (the manifest commits ${m.layerLengths[l]} positions)`, {
          cause: err,
        });
      }
      if (size < need) {
        throw new KvStoreError(
          file,
          `layer file is truncated: ${m.layerLengths[l]} committed positions need ${need} bytes, found ${size}`,
        );
      }
      files.push(await openReadWrite(file));
    }
    const dirHandle = await openDir(dir);
    return newSequence(
      m.seqId,
      dir,
      m.layout,
      m.maxPositions,
      geometry,
      reservedBytesOf(m),
      [...m.layerLengths],
      m.layerLengths.map((n, l) =>
        Array.from({ length: Math.ceil(n / m.blockPositions) }, (_, b) => m.blockCrcs?.[l]?.[b] ?? UNKNOWN_CRC),
      ),
      files,
      dirHandle,
    );
  } catch (err) {
    await Promise.allSettled(files.map((f) => f.close()));
    throw err;
  }
}

/** What a scan of dataDir found: usable sequences, and damaged ones by directory name. */
export interface ScanResult {
  sequences: StoredSequence[];
  /** Directory name -> why its sequence cannot be used. */
  broken: Map<string, KvStoreError>;
}

/**
 * Finds the sequences stored under `dataDir` (creating it if needed). A
 * damaged sequence is reported in `broken` and does not stop the scan.
 * Leftover manifest.json.tmp files (a crash mid-replace) are removed, and so
 * are directories of creates that never wrote a manifest nor any K/V.
 * @throws Error when dataDir itself cannot be created or read.
 */
export async function scanDataDir(dataDir: string, reservedBytesOf: (m: Manifest) => number): Promise<ScanResult> {
  await mkdir(dataDir, { recursive: true });
  const out: ScanResult = { sequences: [], broken: new Map() };
  for (const entry of await readdir(dataDir, { withFileTypes: true })) {
    if (!entry.isDirectory() || !entry.name.startsWith("seq-")) continue;
    const dir = join(dataDir, entry.name);
    await rm(join(dir, `${MANIFEST_FILE}.tmp`), { force: true });
    if (await unfinishedCreate(dir)) {
      // A create cut short before its first manifest: nothing was ever stored.
      await rm(dir, { recursive: true, force: true });
      continue;
    }
    try {
      out.sequences.push(await loadSequence(dir, reservedBytesOf));
    } catch (err) {
      out.broken.set(
        entry.name,
        err instanceof KvStoreError ? err : new KvStoreError(dir, (err as Error).message, { cause: err }),
      );
    }
  }
  return out;
}

/** True when `dir` has no manifest and no byte of K/V: a createSequence that never finished. */
async function unfinishedCreate(dir: string): Promise<boolean> {
  const names = await readdir(dir);
  if (names.includes(MANIFEST_FILE)) return false;
  for (const name of names) if ((await stat(join(dir, name))).size > 0) return false;
  return true;
}

/** Closes a sequence's file handles (errors ignored: we are letting go of them). */
export async function closeSequenceFiles(seq: StoredSequence): Promise<void> {
  await seq.manifestChain;
  await seq.queuedManifest?.catch(() => undefined);
  await Promise.allSettled([...seq.files, seq.dirHandle].map((f) => f.close()));
}

/**
 * Writes all of `src` at byte `filePos` of `fh` (the file at `path`).
 * @throws KvStoreError naming `path`: on a short write (DATA_LOSS), or
 *   wrapping the file system's error with its code ({@link ioErrorCode}:
 *   RESOURCE_EXHAUSTED for ENOSPC, DATA_LOSS for EIO).
 */
export async function writeFully(fh: FileHandle, path: string, src: Uint8Array, filePos: number): Promise<void> {
  let done = 0;
  while (done < src.byteLength) {
    const at = filePos + done;
    const { bytesWritten } = await onFile(path, `write at byte ${at}`, () =>
      fh.write(src, done, src.byteLength - done, at),
    );
    if (bytesWritten <= 0) throw new KvStoreError(path, `short write at byte ${at}`);
    done += bytesWritten;
  }
}

/**
 * fdatasync of `fh` (the file at `path`): its data reaches the disk.
 * @throws KvStoreError naming `path`, wrapping the file system's error with
 *   its code ({@link ioErrorCode}).
 */
export function datasyncFile(fh: FileHandle, path: string): Promise<void> {
  return onFile(path, "fdatasync", () => fh.datasync());
}

/**
 * Reads exactly `len` bytes at `filePos` into `dst` at `dstOff`.
 * @throws KvStoreError naming `path`: when the file ends first (truncated,
 *   DATA_LOSS), or wrapping the file system's error with its code
 *   ({@link ioErrorCode}).
 */
export async function readFully(
  fh: FileHandle,
  path: string,
  dst: Uint8Array,
  dstOff: number,
  len: number,
  filePos: number,
): Promise<void> {
  let done = 0;
  while (done < len) {
    const at = filePos + done;
    const { bytesRead } = await onFile(path, `read at byte ${at}`, () => fh.read(dst, dstOff + done, len - done, at));
    if (bytesRead <= 0)
      throw new KvStoreError(
        path,
        `truncated: expected ${len} bytes at offset ${filePos}, the file ends after ${done}`,
      );
    done += bytesRead;
  }
}

/**
 * The error of block `bad.block` of layer `layer` failing its check:
 * names the file, the block, its bytes and both CRCs (DATA_LOSS).
 */
export function badBlockError(seq: StoredSequence, layer: number, bad: BadBlock): KvStoreError {
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  const at = bad.block * seq.geometry.blockBytes;
  return new KvStoreError(
    join(seq.dir, layerFileName(layer)),
    `block ${bad.block} (bytes ${at}-${at + seq.geometry.blockBytes - 1}) fails its checksum: ` +
      `CRC-32 ${hex(bad.found)}, the manifest records ${hex(bad.expected)}`,
  );
}

/**
 * Reads back layer `layer`'s committed blocks from the one holding
 * position `from` and, for `"verify"`, checks each against its CRC (before
 * a retried step overwrites committed positions: otherwise a damaged block
 * would get a new CRC over the damage), or, for `"recompute"`, records
 * their CRCs (after it did: a block's CRC cannot be continued past a
 * position that changed).
 * @throws KvStoreError naming the file and the block that fails its
 *   check ({@link badBlockError}), or a read that failed ({@link readFully}).
 */
export async function rereadCrcs(
  seq: StoredSequence,
  layer: number,
  from: number,
  mode: "verify" | "recompute",
): Promise<void> {
  const { blockPositions, positionBytes } = seq.geometry;
  const length = seq.lengths[layer]!;
  const path = join(seq.dir, layerFileName(layer));
  const crcs = seq.crcs[layer]!;
  const buf = new Uint8Array(blockPositions * positionBytes);
  for (let b = Math.floor(from / blockPositions); b * blockPositions < length; b++) {
    const n = Math.min(blockPositions, length - b * blockPositions);
    await readFully(seq.files[layer]!, path, buf, 0, n * positionBytes, b * blockPositions * positionBytes);
    const found = blockCrc(buf.subarray(0, n * positionBytes));
    const expected = crcs[b] ?? UNKNOWN_CRC;
    if (mode === "recompute") crcs[b] = found;
    else if (expected !== UNKNOWN_CRC && found !== expected)
      throw badBlockError(seq, layer, { block: b, expected, found });
  }
  if (mode === "recompute") crcs.length = Math.ceil(length / blockPositions);
}
