/**
 * Quick self-measurements a node makes at start (its profile), shared by the
 * nodes and by the scheduler's machine profile.
 */
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
