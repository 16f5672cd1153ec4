/**
 * The machine's memory read bandwidth, measured by the bench itself so each
 * roofline figure is a ratio taken in the same run: one thread (what a
 * single-threaded kernel such as the memory-node's attention can hope for)
 * and all cores at once (what onnxruntime's multi-threaded dense graphs can).
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { bestOf, measureReadBandwidth as memcmpReadBandwidth } from "@tessera/profiling";

/** Read bandwidth figures, in bytes per second. */
export interface ReadBandwidth {
  /** Best of memcmp and the JS sum, one thread. */
  bytesPerSecond: number;
  /** `Buffer.compare` of two equal buffers (native memcmp), one thread: 2 × size bytes read per call. */
  memcmp: number;
  /** Sum of a Float64Array with four independent add chains, one thread. */
  jsSum: number;
  /** memcmp in every core at once (worker threads, each on its own buffers), summed over the threads; at least {@link memcmp}. */
  allCores: number;
  /** The all-core figure as measured (it can come out below one thread's on a busy machine). */
  allCoresMeasured: number;
  /** Threads used for {@link allCores}. */
  threads: number;
}

// Runs in each worker: waits for "go" so all threads read at once, then
// reports the seconds of `reps` memcmps of its own buffers.
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const a = Buffer.alloc(workerData.bytes, 1);
const b = Buffer.alloc(workerData.bytes, 1);
Buffer.compare(a, b);
parentPort.postMessage("ready");
parentPort.once("message", () => {
  const t0 = performance.now();
  let sink = 0;
  for (let r = 0; r < workerData.reps; r++) sink += Buffer.compare(a, b);
  parentPort.postMessage({ seconds: (performance.now() - t0) / 1000, sink });
});
`;

/** Aggregate memcmp read rate of `threads` worker threads running at once, bytes/s. */
async function parallelMemcmpRate(threads: number, bytes: number, reps: number): Promise<number> {
  const workers = Array.from(
    { length: threads },
    () => new Worker(WORKER_SOURCE, { eval: true, workerData: { bytes, reps } }),
  );
  try {
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once("message", resolve))));
    const done = workers.map(
      (w) =>
        new Promise<number>((resolve, reject) => {
          w.once("message", (m: { seconds: number }) => resolve(m.seconds));
          w.once("error", reject);
        }),
    );
    const t0 = performance.now();
    for (const w of workers) w.postMessage("go");
    await Promise.all(done);
    // Wall time over all threads: the rate of the machine, not of the fastest thread.
    const wall = (performance.now() - t0) / 1000;
    return (threads * reps * 2 * bytes) / wall;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/**
 * Measures read bandwidth with 256 MiB buffers (many times any L3 here, so
 * caches do not flatter the figure): one thread (memcmp, and a JS f64 sum
 * with four add chains; the higher counts) and every core at once.
 */
export async function measureReadBandwidth(): Promise<ReadBandwidth> {
  const bytes = 256 * 2 ** 20;
  // One thread's memcmp of two equal buffers, best of 5 (core's start-up measure, larger buffers).
  const memcmp = memcmpReadBandwidth(bytes, 5);
  const f = new Float64Array(bytes / 8).fill(1);
  let sink = 0;
  const tSum = bestOf(5, () => {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let i = 0; i < f.length; i += 4) {
      s0 += f[i]!;
      s1 += f[i + 1]!;
      s2 += f[i + 2]!;
      s3 += f[i + 3]!;
    }
    sink += s0 + s1 + s2 + s3;
  });
  if (Number.isNaN(sink)) throw new Error("unreachable");
  const jsSum = bytes / tSum;
  const threads = availableParallelism();
  let allCores = 0;
  for (let r = 0; r < 3; r++) allCores = Math.max(allCores, await parallelMemcmpRate(threads, bytes / 2, 4));
  return {
    bytesPerSecond: Math.max(memcmp, jsSum),
    memcmp,
    jsSum,
    allCores: Math.max(allCores, memcmp),
    allCoresMeasured: allCores,
    threads,
  };
}
