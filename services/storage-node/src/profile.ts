/**
 * A storage-node's self-profile (issue 4, item 1): sequential read and write
 * bandwidth of its data directory's disk, the cost of a durable append
 * (write + fdatasync), capacity and free bytes, its streaming buffer, and
 * the attention kernel on one thread (the storage-node folds on one), as a
 * tessera.v1.NodeProfile. Read bandwidth, append cost and the kernel come
 * from @tessera/profiling (`measureDiskRead`, `measureAttentionKernel`),
 * shared with the bench; write bandwidth is measured here
 * ({@link measureDiskWrite}).
 */
import { mkdir, open, rm, statfs } from "node:fs/promises";
import { availableParallelism, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { attentionKernel, DEFAULT_ATTENTION_KERNEL } from "@tessera/attention";
import { ConfigError } from "@tessera/core";
import { NodeProfileSchema, create, type NodeProfile } from "@tessera/proto";
import { measureAttentionKernel, measureDiskRead } from "@tessera/profiling";

/** What {@link profileStorageNode} needs; the storage-node's compiled options fit. */
export interface StorageProfileOptions {
  /** Directory of the KV cache files (created if missing); the disk measured is its. */
  readonly dataDir: string;
  /** Disk bytes of KV cache the node may hold, advertised as capacity_bytes. @default 0 */
  readonly capacityBytes?: number;
  /** Bytes of the streaming read buffer, advertised as buffer_bytes. @default 64 MiB */
  readonly bufferBytes?: number;
  /** $/h advertised with the profile. @default 0 */
  readonly pricePerHour?: number;
  /** Name of the attention kernel measured (a registered one). @default "wasm" */
  readonly attentionKernel?: string;
}

/**
 * Sizes of the disk and kernel measurements {@link profileStorageNode}
 * makes: a 64 MiB file (the bench reads 256 MiB) written and read in chunks
 * of half the node's buffer (clamped to 1..16 MiB, as the node reads a
 * half-buffer at a time), best of 2 reads with pages dropped; the attention
 * kernel on one thread over 8 sequences × 1024 positions (32 MiB of f32 KV
 * per layer shape), best of 2. On a disk with less than 4 x 64 MiB free
 * the file shrinks to a quarter of the free bytes ({@link probeSizes}).
 */
export const STORAGE_PROFILE_SIZES = {
  fileBytes: 64 * 2 ** 20,
  minChunkBytes: 2 ** 20,
  maxChunkBytes: 16 * 2 ** 20,
  reps: 2,
  sequences: 8,
  positions: 1024,
} as const;

/**
 * Sequential write bandwidth of the disk under `dir`, bytes/s: a fresh
 * `bytes`-byte file written front to back in `chunk`-byte writes, then
 * fdatasync'ed (so the time includes reaching the disk); the file is
 * removed after.
 * @throws Error (Node's fs errors) when `dir` is not writable.
 */
export async function measureDiskWrite(dir: string, bytes = 64 * 2 ** 20, chunk = 16 * 2 ** 20): Promise<number> {
  const path = join(dir, `tessera-write-profile-${process.pid}.bin`);
  const buf = Buffer.alloc(chunk);
  for (let i = 0; i < chunk; i += 4096) buf.writeUInt32LE(i, i);
  const fh = await open(path, "w");
  try {
    const t0 = performance.now();
    for (let off = 0; off < bytes; off += chunk) await fh.write(buf, 0, Math.min(chunk, bytes - off), off);
    await fh.datasync();
    return bytes / Math.max((performance.now() - t0) / 1000, 1e-9);
  } finally {
    await fh.close();
    await rm(path, { force: true });
  }
}

/**
 * Measures this machine as a storage-node (one to a few seconds, most of it
 * the disk's): write bandwidth ({@link measureDiskWrite}), read bandwidth
 * with pages dropped and the cost of one durable 4 KiB append when 16 run
 * at once (`measureDiskRead`), free bytes of the data directory's
 * filesystem (statfs), and the one-thread roofline of the node's attention
 * kernel (`attentionKernel`, measured by `measureAttentionKernel`); sizes {@link STORAGE_PROFILE_SIZES}. Where
 * pages cannot be dropped (no `dd iflag=nocache`), read_bytes_per_second
 * is a page-cache figure.
 * @returns a NodeProfile of role "storage" (figures case "storage") with the options' price.
 * @throws Error (Node's fs errors) when the data directory cannot be created or written;
 *   Error when WebAssembly SIMD with shared memory is unavailable;
 *   RangeError when no kernel has the name given.
 */
export async function profileStorageNode(o: StorageProfileOptions): Promise<NodeProfile> {
  const t0 = performance.now();
  const dir = resolve(o.dataDir);
  await mkdir(dir, { recursive: true });
  const S = STORAGE_PROFILE_SIZES;
  const bufferBytes = o.bufferBytes ?? 64 * 2 ** 20;
  const chunk = Math.min(S.maxChunkBytes, Math.max(S.minChunkBytes, 2 ** Math.floor(Math.log2(bufferBytes / 2))));
  const before = await statfs(dir);
  const probe = probeSizes(dir, before.bavail * before.bsize, chunk);
  let writeBytesPerSecond: number;
  let disk: Awaited<ReturnType<typeof measureDiskRead>>;
  try {
    writeBytesPerSecond = await measureDiskWrite(dir, probe.fileBytes, probe.chunk);
    disk = await measureDiskRead(dir, probe.fileBytes, probe.chunk, S.reps);
  } catch (err) {
    // A FileHandle's errors name no file.
    throw new Error(
      `${dir}: the start-up disk profile failed (${probe.fileBytes}-byte probe files, ${probe.freeBytes} bytes free): ${(err as Error).message}`,
      { cause: err },
    );
  }
  const fs = await statfs(dir);
  const kernel = attentionKernel(o.attentionKernel ?? DEFAULT_ATTENTION_KERNEL);
  const k = await measureAttentionKernel(S.sequences, S.positions, 1, S.reps, kernel);
  return create(NodeProfileSchema, {
    role: "storage",
    pricePerHour: o.pricePerHour ?? 0,
    cores: availableParallelism(),
    memoryBytes: BigInt(totalmem()),
    profileSeconds: (performance.now() - t0) / 1000,
    figures: {
      case: "storage",
      value: {
        readBytesPerSecond: disk.readBytesPerS,
        writeBytesPerSecond,
        syncSeconds: disk.syncS,
        capacityBytes: BigInt(o.capacityBytes ?? 0),
        freeBytes: BigInt(fs.bavail) * BigInt(fs.bsize),
        bufferBytes: BigInt(bufferBytes),
        kernelKvBytesPerSecond: k.kvBytesPerSOneThread,
        kernelFlops: k.flopsPerSOneThread,
        itemOverheadSeconds: k.itemS,
      },
    },
  });
}

/**
 * The probe file of the disk profile on a disk with `freeBytes` free:
 * STORAGE_PROFILE_SIZES.fileBytes in `chunk`-byte writes, or, when that is
 * more than a quarter of the free bytes, whole chunks (of at most `chunk`,
 * at least minChunkBytes) within that quarter.
 * @throws ConfigError naming "dataDir", the directory and its free bytes,
 *   when not even one minChunkBytes chunk fits in a quarter of them.
 */
export function probeSizes(
  dir: string,
  freeBytes: number,
  chunk: number,
): { fileBytes: number; chunk: number; freeBytes: number } {
  const S = STORAGE_PROFILE_SIZES;
  const budget = Math.floor(freeBytes / 4);
  if (budget >= S.fileBytes) return { fileBytes: S.fileBytes, chunk, freeBytes };
  if (budget < S.minChunkBytes) {
    throw new ConfigError(
      "dataDir",
      `${dir} has ${freeBytes} bytes free; the start-up disk profile needs ${4 * S.minChunkBytes} ` +
        `(4 x its smallest probe file): free some space, or start with --profile off or a profile file`,
    );
  }
  const c = Math.min(chunk, 2 ** Math.floor(Math.log2(budget)));
  return { fileBytes: Math.floor(budget / c) * c, chunk: c, freeBytes };
}

/**
 * Checks that a given profile is a storage-node's: role "storage" and
 * figures case "storage".
 * @throws ConfigError naming the option "profile".
 */
export function checkStorageProfile(p: NodeProfile): void {
  if (p.role !== "storage" || p.figures.case !== "storage")
    throw new ConfigError(
      "profile",
      `is a ${p.role || "(no role)"} profile (figures ${p.figures.case ?? "none"}), not a storage-node's`,
    );
}
