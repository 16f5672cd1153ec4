/**
 * Disk figures of this machine (issue 4, item 1): sequential read
 * bandwidth of a directory's disk and of the page cache, and the cost of a
 * durable append.
 */
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import type { DiskRead } from "@tessera/scheduler";
import { dropFilePages } from "./measure.js";

/**
 * Sequential read bandwidth of the disk under `dir`: a fresh `bytes`-byte
 * file is written and fsync'ed, its pages dropped, then read front to back
 * in `chunk`-byte reads (as the storage-node streams a layer file); best of
 * `reps`; then read again from the page cache. The file is removed after.
 * @throws Error (Node's fs errors) when `dir` is not writable.
 */
export async function measureDiskRead(
  dir: string,
  bytes = 256 * 2 ** 20,
  chunk = 16 * 2 ** 20,
  reps = 2,
): Promise<DiskRead> {
  const path = join(dir, `tessera-disk-profile-${process.pid}.bin`);
  const fh = await open(path, "w+");
  const buf = Buffer.alloc(chunk);
  const readAll = async () => {
    const t0 = performance.now();
    for (let off = 0; off < bytes; off += chunk) await fh.read(buf, 0, chunk, off);
    return (performance.now() - t0) / 1000;
  };
  try {
    for (let off = 0; off < bytes; off += chunk) {
      for (let i = 0; i < chunk; i += 4096) buf.writeUInt32LE((off + i) >>> 0, i);
      await fh.write(buf, 0, chunk, off);
    }
    await fh.datasync();
    let best = Infinity;
    let dropped = true;
    for (let r = 0; r < reps; r++) {
      dropped = dropFilePages(path) && dropped;
      best = Math.min(best, await readAll());
    }
    let cached = Infinity;
    for (let r = 0; r < reps; r++) cached = Math.min(cached, await readAll());
    return {
      readBytesPerS: bytes / best,
      dropped,
      cachedReadBytesPerS: bytes / cached,
      syncS: await measureAppendSync(dir),
    };
  } finally {
    await fh.close();
    await rm(path, { force: true });
  }
}

/**
 * Seconds per durable append with `files` appends in flight (as a
 * storage-node writes one row per sequence of a request, concurrently): each
 * round writes 4 KiB at the end of each of `files` files and fdatasyncs it,
 * all at once; best of `rounds` rounds, wall time ÷ files.
 */
export async function measureAppendSync(dir: string, files = 16, rounds = 4): Promise<number> {
  const paths = Array.from({ length: files }, (_, i) => join(dir, `tessera-sync-profile-${process.pid}-${i}.bin`));
  const handles = await Promise.all(paths.map((p) => open(p, "w+")));
  const row = Buffer.alloc(4096, 3);
  try {
    let best = Infinity;
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      await Promise.all(
        handles.map(async (fh) => {
          await fh.write(row, 0, row.length, r * row.length);
          await fh.datasync();
        }),
      );
      best = Math.min(best, (performance.now() - t0) / 1000);
    }
    return best / files;
  } finally {
    await Promise.all(handles.map((fh) => fh.close()));
    await Promise.all(paths.map((p) => rm(p, { force: true })));
  }
}
