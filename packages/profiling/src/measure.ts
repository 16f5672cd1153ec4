/**
 * Quick self-measurements a node makes at start (its profile), shared by the
 * nodes and by the scheduler's machine profile.
 */
import { spawnSync } from "node:child_process";
import { performance } from "node:perf_hooks";

/**
 * Measures this process's RAM read bandwidth in bytes/s: Buffer.compare of
 * two equal `bufferBytes` buffers (filled, so their pages are real and not
 * the shared zero page) reads 2 x `bufferBytes`; the best of `repeats`
 * passes is taken (the least disturbed by other work). With the defaults it
 * allocates 128 MiB for the duration and takes tens of milliseconds; a
 * rough figure (one thread, memcmp), the same order as the single-thread
 * read rate the attention kernels see.
 * @throws RangeError when `bufferBytes` or `repeats` is not a positive integer.
 */
export function measureReadBandwidth(bufferBytes = 64 * 1024 ** 2, repeats = 3): number {
  if (!Number.isInteger(bufferBytes) || bufferBytes < 1 || !Number.isInteger(repeats) || repeats < 1) {
    throw new RangeError(`measureReadBandwidth: bufferBytes ${bufferBytes} and repeats ${repeats} must be >= 1`);
  }
  const a = Buffer.alloc(bufferBytes, 0x5a);
  const b = Buffer.alloc(bufferBytes, 0x5a);
  let best = Infinity;
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    if (Buffer.compare(a, b) !== 0) throw new Error("measureReadBandwidth: equal buffers compared unequal");
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return (2 * bufferBytes) / Math.max(best, 1e-9);
}

/** Best (least) wall seconds of `reps` runs of `fn`: the run least disturbed by other work. */
export function bestOf(reps: number, fn: () => void): number {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

/**
 * Drops a file's pages from the page cache (`dd iflag=nocache count=0`:
 * posix_fadvise DONTNEED), so the next read comes from the disk.
 * @returns false when dd is missing or fails (the pages may still be cached).
 */
export function dropFilePages(path: string): boolean {
  return spawnSync("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]).status === 0;
}
