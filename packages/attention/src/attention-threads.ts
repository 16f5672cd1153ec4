/**
 * Decode attention on several cores: worker threads that run the
 * WebAssembly SIMD kernels (wasm-attention.ts) on the same shared wasm
 * memory as the calling thread, so a KV cache in a {@link WasmHeap} is read
 * in place by every thread. Each sequence's positions are split into one
 * contiguous range per thread; each thread folds its range into its own
 * online-softmax state, and the calling thread combines the partial states
 * (split-K, as FlashDecoding does on GPUs: Dao et al. 2023, "Flash-Decoding
 * for long-context inference"), so even one long sequence uses every core.
 *
 * The calling thread hands out the work through a shared control word
 * (Atomics.notify), does its own share, then blocks in Atomics.wait until
 * the workers are done: a call is synchronous, like the single-threaded
 * kernel. Items under {@link SPLIT_MIN_BYTES} of K/V are not split but go
 * whole to the least loaded thread, and a call with less than that in all
 * runs on the calling thread alone: a handoff costs tens of microseconds.
 * Workers start on the first call that uses them. Queries go in batches of
 * at most {@link ATTENTION_QUERY_CHUNK} (a long prefill is cut into chunks),
 * so each thread's state in the heap is bounded.
 *
 * A worker that fails (at set-up or in a job) marks its control word DEAD
 * before it ends, so the calling thread never waits on it; the pool is then
 * broken: its workers stop, the failed call is redone on the calling thread
 * alone, as are later calls, and the worker's error text goes to `log`.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { attentionDimsKey, type AttentionDims, type CausalQueries } from "./dims.js";
import {
  ATTENTION_QUERY_CHUNK,
  WASM_ATTENTION_BLOCK,
  createWasmAttention,
  foldBlocks,
  writeOutputs,
  type WasmAttention,
  type WasmAttentionLayout,
} from "./attention-wasm.js";
import type { WasmHeap } from "./wasm-attention.js";

/** Items with less K/V than this (bytes read) are not split between threads; calls with less in all use no worker. */
export const SPLIT_MIN_BYTES = 2 * 2 ** 20;

/**
 * Bytes of K and V (f32) that causal attention of `nQueries` queries from
 * position `startPos` reads, counting every query as reading all
 * startPos + nQueries positions: 2 x 4 x n_kv_heads x head_dim x
 * (startPos + nQueries) x nQueries. The measure {@link SPLIT_MIN_BYTES} is in.
 */
export function attendKvBytes(dims: AttentionDims, nQueries: number, startPos: number): number {
  return 2 * 4 * dims.nKvHeads * dims.headDim * (startPos + nQueries) * nQueries;
}

/**
 * How long the calling thread waits for a live worker's share before giving
 * up, ms. A worker that fails says so at once (DEAD); this only bounds a
 * worker that hangs or is killed without running its `finally`.
 */
const WORKER_TIMEOUT_MS = 120_000;

/**
 * f64 fields of one job in a worker's job table (in the heap), in order: the
 * state's s, c, lsum, a, nhp, then n_heads, n_kv_heads, head_dim; the
 * item's q, m, l, acc slot addresses; nQueries, startPos, firstPos,
 * nPositions, kPtr, vPtr (of firstPos) and the row stride in bytes.
 */
const JOB = 19;

/** Control words per worker (Int32): [state, job count, job table address, error text length]. */
const IDLE = 0;
const READY = 1;
const DONE = 2;
const STOP = 3;
/** The worker has ended (failed, or stopped): set by the worker's `finally`, never cleared. */
const DEAD = 4;
/** Bytes of a worker's error text kept for the calling thread. */
const ERROR_TEXT_BYTES = 2048;

// The worker: instantiates the kernels on the shared memory, then runs job
// tables with foldBlocks (the calling thread's own fold loop, as source).
//
// Why eval'd source and not a worker module file: a file would have to be
// found next to this one both as dist/*.js (node) and as src/*.ts under tsx
// in the tests (where it needs tsx's loader through execArgv) and under
// bundlers; the source of foldBlocks itself keeps the two threads' fold loop
// one piece of code. foldBlocks must therefore stay self-contained: it may
// use only its arguments and WASM_ATTENTION_BLOCK (defined below).
//
// The whole body is in try/finally: however the thread ends (an exception
// at set-up or in a job, or STOP) it stores DEAD and notifies, so the
// calling thread never waits on a dead worker; a failure also leaves its
// text in the shared errorText and is rethrown (the Worker's 'error' event).
const workerSource = (fold: string) => `
const { workerData } = require("node:worker_threads");
const { module, memory, control, errorText, fault } = workerData;
const c = new Int32Array(control);
try {
  if (fault === "setup") throw new Error("injected fault at set-up");
  const WASM_ATTENTION_BLOCK = ${WASM_ATTENTION_BLOCK};
  const foldBlocks = ${fold};
  const k = new WebAssembly.Instance(module, { env: { memory } }).exports;
  for (;;) {
    // Sleep until the calling thread hands out work (READY) or stops us; also
    // while it has not yet taken our last result (DONE), so we never spin.
    let state = Atomics.load(c, 0);
    while (state !== ${READY} && state !== ${STOP}) {
      Atomics.wait(c, 0, state);
      state = Atomics.load(c, 0);
    }
    if (state === ${STOP}) break;
    if (fault === "job") throw new Error("injected fault in a job");
    const f = new Float64Array(memory.buffer);
    const n = c[1];
    const base = (c[2] >>> 0) / 8;
    for (let j = 0; j < n; j++) {
      const x = f.subarray(base + j * ${JOB}, base + (j + 1) * ${JOB});
      const d = { s: x[0], c: x[1], lsum: x[2], a: x[3], nhp: x[4], nHeads: x[5], nKvHeads: x[6], headDim: x[7] };
      const qs = { q: x[8], m: x[9], l: x[10], acc: x[11] };
      foldBlocks(k, d, qs, x[12], x[13], x[14], x[15], x[16], x[17], x[18]);
    }
    Atomics.store(c, 0, ${DONE});
    Atomics.notify(c, 0);
  }
} catch (e) {
  const text = new TextEncoder().encode(String((e && e.stack) || e)).subarray(0, ${ERROR_TEXT_BYTES});
  new Uint8Array(errorText).set(text);
  c[3] = text.length;
  throw e;
} finally {
  Atomics.store(c, 0, ${DEAD});
  Atomics.notify(c, 0);
}
`;

/** One item of {@link AttentionWorkers.attend}: a sequence's queries over its cache in the heap. */
export interface HeapAttendItem {
  readonly queries: CausalQueries;
  /** Byte address of position 0's K row ([n_kv_heads, head_dim] f32 rows, packed). */
  readonly kPtr: number;
  /** Byte address of position 0's V row. */
  readonly vPtr: number;
  /** Row of `out` for the first query. */
  readonly outRow: number;
}

/** Threads attending over KV caches in one heap; see the file comment. */
export interface AttentionWorkers {
  readonly heap: WasmHeap;
  /** Threads that share the work, the calling one included (1 once the pool is broken). */
  readonly threads: number;
  /**
   * Creates the calling thread's state of `dims` in the heap now (bounded:
   * {@link ATTENTION_QUERY_CHUNK} query slots), so that later calls with
   * these dims always have room to run, on the calling thread at least.
   * @throws RangeError when the heap cannot hold it.
   */
  prepare(dims: AttentionDims): void;
  /**
   * Causal attention of every item (its queries over positions [0,
   * startPos + nQueries) of its cache), outputs ([n_heads * head_dim] f32
   * rows) at each item's outRow of `out`. Synchronous. When a worker fails
   * the call is redone on the calling thread (see the file comment).
   * @throws RangeError when the heap cannot hold the calling thread's state
   *   (see {@link prepare}), or a query saw no position.
   */
  attend(dims: AttentionDims, items: readonly HeapAttendItem[], out: Float32Array): void;
  /** Stops the workers. */
  close(): Promise<void>;
}

/** Options of {@link createAttentionWorkers}. */
export interface AttentionWorkersOptions {
  /** Where a failed worker's error text goes. @default a line on stderr */
  log?: (line: string) => void;
  /**
   * Test hook: every worker throws at set-up ("setup") or in its first job
   * ("job"), to test that the pool survives.
   */
  fault?: "setup" | "job";
}

/**
 * The states of `dims` in `heap` (kept in `states` by layer shape): [0] the
 * calling thread's (created, or RangeError), then up to `n - 1` workers'
 * (as many as fit), each with {@link ATTENTION_QUERY_CHUNK} query slots.
 */
function statesOf(
  heap: WasmHeap,
  states: Map<string, WasmAttention[]>,
  dims: AttentionDims,
  n: number,
): WasmAttention[] {
  const key = attentionDimsKey(dims);
  let sts = states.get(key);
  if (!sts) {
    const st = createWasmAttention(heap, dims);
    try {
      st.reserve(ATTENTION_QUERY_CHUNK);
    } catch (err) {
      st.dispose();
      throw err;
    }
    states.set(key, (sts = [st]));
  }
  while (sts.length < n) {
    let st: WasmAttention | undefined;
    try {
      st = createWasmAttention(heap, dims);
      st.reserve(ATTENTION_QUERY_CHUNK);
    } catch {
      st?.dispose();
      break; // the heap is full: fewer threads
    }
    sts.push(st);
  }
  return sts;
}

/** One item of a batch: its query slots (from `slot0`, in every state) and its parts, by thread. */
interface BatchItem {
  readonly it: HeapAttendItem;
  readonly slot0: number;
  readonly parts: readonly { thread: number; first: number; count: number }[];
}

/**
 * Splits a batch between `nThreads` threads. Slots: item i's queries at
 * slot0 = queries of the items before it, in every state. Parts: big items
 * (>= SPLIT_MIN_BYTES) are split evenly between the threads by position;
 * small ones go whole to the thread with the least work so far.
 */
function planBatch(dims: AttentionDims, items: readonly HeapAttendItem[], nThreads: number): BatchItem[] {
  const load = new Array<number>(nThreads).fill(0);
  let slots = 0;
  return items.map((it) => {
    const n = it.queries.startPos + it.queries.nQueries;
    const bytes = attendKvBytes(dims, it.queries.nQueries, it.queries.startPos);
    const slot0 = slots;
    slots += it.queries.nQueries;
    const parts: { thread: number; first: number; count: number }[] = [];
    if (nThreads > 1 && bytes >= SPLIT_MIN_BYTES) {
      for (let t = 0; t < nThreads; t++) {
        const first = Math.round((t * n) / nThreads);
        parts.push({ thread: t, first, count: Math.round(((t + 1) * n) / nThreads) - first });
        load[t]! += bytes / nThreads;
      }
    } else {
      const t = load.indexOf(Math.min(...load));
      parts.push({ thread: t, first: 0, count: n });
      load[t]! += bytes;
    }
    return { it, slot0, parts };
  });
}

/**
 * Writes thread `thread`'s jobs of `plan` ({@link JOB} f64 fields each, in
 * the order the worker source reads them) into the job table at byte
 * `jobs` of the heap (`f64` its view), for the state laid out as `L`.
 * @returns the number of jobs written.
 */
function writeJobs(
  f64: Float64Array,
  jobs: number,
  plan: readonly BatchItem[],
  thread: number,
  L: WasmAttentionLayout,
  dims: AttentionDims,
): number {
  const kvRowB = 4 * dims.nKvHeads * dims.headDim;
  const qStride = dims.nHeads * dims.headDim;
  let nJobs = 0;
  for (const p of plan) {
    for (const part of p.parts) {
      if (part.thread !== thread) continue;
      const { nQueries, startPos } = p.it.queries;
      const job = [
        L.s,
        L.c,
        L.lsum,
        L.a,
        L.nhp,
        dims.nHeads,
        dims.nKvHeads,
        dims.headDim,
        L.q + 4 * p.slot0 * qStride,
        L.m + 4 * p.slot0 * L.nhp,
        L.l + 8 * p.slot0 * L.nhp,
        L.acc + 8 * p.slot0 * qStride,
        nQueries,
        startPos,
        part.first,
        part.count,
        p.it.kPtr + part.first * kvRowB,
        p.it.vPtr + part.first * kvRowB,
        kvRowB,
      ];
      f64.set(job, jobs / 8 + nJobs * JOB);
      nJobs++;
    }
  }
  return nJobs;
}

/**
 * Waits (Atomics.wait, up to WORKER_TIMEOUT_MS) until a worker handed a
 * job (control state READY) leaves READY.
 * @returns the state it ended in: DONE, READY (timed out) or DEAD.
 */
function awaitWorker(c: Int32Array): number {
  const t0 = Date.now();
  let state = Atomics.load(c, 0);
  while (state === READY) {
    Atomics.wait(c, 0, READY, WORKER_TIMEOUT_MS);
    state = Atomics.load(c, 0);
    if (state === READY && Date.now() - t0 >= WORKER_TIMEOUT_MS) break;
  }
  return state;
}

interface WorkerSlot {
  readonly worker: Worker;
  /** [state, job count, job table address, error text length] */
  readonly control: Int32Array;
  readonly errorText: Uint8Array;
  /** Heap address of its job table ({@link ATTENTION_QUERY_CHUNK} jobs). */
  readonly jobs: number;
}

/**
 * A pool of `threads - 1` worker threads on `heap` (none when threads <= 1),
 * started on the first call that has enough K/V to split.
 * @param threads threads to use, the calling one included. @default os.availableParallelism()
 */
export function createAttentionWorkers(
  heap: WasmHeap,
  threads = availableParallelism(),
  options: AttentionWorkersOptions = {},
): AttentionWorkers {
  const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const workers: WorkerSlot[] = [];
  let started = false;
  let broken = threads <= 1;
  let closed = false;
  /** Per layer shape: the calling thread's state, then one per worker. */
  const states = new Map<string, WasmAttention[]>();

  const stop = async () => {
    closed = true;
    const ending = workers.splice(0);
    for (const w of ending) {
      Atomics.store(w.control, 0, STOP);
      Atomics.notify(w.control, 0);
    }
    await Promise.all(ending.map((w) => w.worker.terminate()));
    for (const w of ending) heap.free(w.jobs);
  };

  /** Marks the pool broken (once), logs why and stops the workers. */
  const fail = (why: string) => {
    if (broken) return;
    broken = true;
    log(`attention workers: ${why}; attention runs on the calling thread from now on`);
    void stop();
  };

  /** Starts the workers; none (and the pool broken) when the heap cannot hold their job tables. */
  const start = () => {
    started = true;
    if (closed) return;
    for (let i = 1; i < threads; i++) {
      const jobs = heap.alloc(JOB * 8 * ATTENTION_QUERY_CHUNK);
      if (jobs === undefined) break;
      const control = new Int32Array(new SharedArrayBuffer(16));
      const errorText = new Uint8Array(new SharedArrayBuffer(ERROR_TEXT_BYTES));
      const worker = new Worker(workerSource(foldBlocks.toString()), {
        eval: true,
        // The source is self-contained CommonJS: the parent's flags (e.g.
        // --input-type=module, loaders) must not change how it is read.
        execArgv: [],
        workerData: {
          module: heap.module,
          memory: heap.memory,
          control: control.buffer,
          errorText: errorText.buffer,
          fault: options.fault,
        },
      });
      // Without these listeners a worker's uncaught exception would be an
      // unhandled 'error' event and end the whole process.
      worker.on("error", (err: Error) => fail(`worker ${i} failed: ${err.message}`));
      worker.on("exit", (code) => {
        if (!closed) fail(`worker ${i} exited (code ${code})`);
      });
      worker.unref();
      workers.push({ worker, control, errorText, jobs });
    }
    if (workers.length === 0) broken = true;
  };

  const statesFor = (dims: AttentionDims, n: number) => statesOf(heap, states, dims, n);

  const errorTextOf = (w: WorkerSlot) => {
    const n = Math.min(Math.max(w.control[3]!, 0), ERROR_TEXT_BYTES);
    return new TextDecoder().decode(w.errorText.slice(0, n)) || "no error text";
  };

  /**
   * Runs one batch (<= ATTENTION_QUERY_CHUNK queries in all) on up to
   * `maxThreads` threads. Returns false when a worker failed (the outputs
   * are then not written).
   */
  const runBatch = (dims: AttentionDims, items: readonly HeapAttendItem[], out: Float32Array, maxThreads: number) => {
    const kvRowB = 4 * dims.nKvHeads * dims.headDim;
    const bytesOf = (q: CausalQueries) => attendKvBytes(dims, q.nQueries, q.startPos);
    const total = items.reduce((n, it) => n + bytesOf(it.queries), 0);
    let T = maxThreads > 1 && total >= SPLIT_MIN_BYTES ? maxThreads : 1;
    if (T > 1 && !started) start();
    if (broken) T = 1;
    T = Math.min(T, workers.length + 1);
    const sts = statesFor(dims, T);
    const nThreads = Math.min(T, sts.length);
    const plan = planBatch(dims, items, nThreads);
    // Queries and empty state in each state that folds them (reserved: no allocation), then the job tables.
    for (const p of plan) for (const part of p.parts) sts[part.thread]!.begin(p.it.queries, p.slot0);
    const f64 = heap.f64();
    const failures: string[] = [];
    const handedOut: boolean[] = [];
    for (let w = 0; w + 1 < nThreads; w++) {
      const nJobs = writeJobs(f64, workers[w]!.jobs, plan, w + 1, sts[w + 1]!.layout(), dims);
      const c = workers[w]!.control;
      c[1] = nJobs;
      c[2] = workers[w]!.jobs | 0;
      // Only an idle worker gets work: a dead one (DEAD) is never waited on.
      const was = Atomics.compareExchange(c, 0, IDLE, READY);
      handedOut.push(was === IDLE);
      if (was === IDLE) Atomics.notify(c, 0);
      else failures.push(`worker ${w + 1} is gone: ${errorTextOf(workers[w]!)}`);
    }
    // The calling thread's share.
    for (const p of plan) {
      for (const part of p.parts) {
        if (part.thread !== 0) continue;
        const kp = p.it.kPtr + part.first * kvRowB;
        const vp = p.it.vPtr + part.first * kvRowB;
        sts[0]!.foldInHeap(part.first, part.count, kp, vp, kvRowB, p.slot0, p.it.queries);
      }
    }
    // Wait for every worker that got work (also after one failed: none may still be running).
    for (let w = 0; w + 1 < nThreads; w++) {
      if (!handedOut[w]) continue;
      const c = workers[w]!.control;
      const state = awaitWorker(c);
      if (state === DONE) Atomics.compareExchange(c, 0, DONE, IDLE);
      else if (state === READY) failures.push(`worker ${w + 1} did not answer in ${WORKER_TIMEOUT_MS / 1000} s`);
      else failures.push(`worker ${w + 1} failed: ${errorTextOf(workers[w]!)}`);
    }
    if (failures.length > 0) {
      fail(failures.join("; "));
      return false;
    }
    for (const p of plan) {
      const parts = p.parts.map((part) => ({ layout: sts[part.thread]!.layout(), slot0: p.slot0 }));
      writeOutputs(heap, parts, dims, { nQ: p.it.queries.nQueries, start: p.it.queries.startPos }, out, p.it.outRow);
    }
    return true;
  };

  return {
    heap,
    get threads() {
      return broken ? 1 : threads;
    },
    prepare(dims) {
      statesFor(dims, 1);
    },
    attend(dims, items, out) {
      // Batches of at most ATTENTION_QUERY_CHUNK queries; longer items cut into chunks.
      let batch: HeapAttendItem[] = [];
      let inBatch = 0;
      const run = () => {
        if (batch.length === 0) return;
        // A worker failed: redo the batch on the calling thread.
        if (!runBatch(dims, batch, out, broken ? 1 : threads)) runBatch(dims, batch, out, 1);
        batch = [];
        inBatch = 0;
      };
      for (const it of items) {
        const { q, qRow, nQueries, startPos } = it.queries;
        for (let j = 0; j < nQueries; j += ATTENTION_QUERY_CHUNK) {
          const n = Math.min(ATTENTION_QUERY_CHUNK, nQueries - j);
          if (inBatch + n > ATTENTION_QUERY_CHUNK) run();
          const queries = { q, qRow: qRow + j, nQueries: n, startPos: startPos + j };
          batch.push({ queries, kPtr: it.kPtr, vPtr: it.vPtr, outRow: it.outRow + j });
          inBatch += n;
        }
      }
      run();
    },
    close: stop,
  };
}
