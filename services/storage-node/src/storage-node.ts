/**
 * The storage-node: the `tessera.v1.Attention` service (the attention-node
 * shell of @tessera/attention) with each sequence's KV cache in files under
 * `dataDir` (layout, manifest and fsync policy: see kv-store.ts); this file
 * is its KV store. Attention never reads a sequence's cache into memory:
 * it streams the blocks of positions a request needs through one reusable
 * buffer of at most `bufferBytes` (two halves: the next chunk is read from
 * disk while the current one is folded into an online-softmax accumulator,
 * the kernel's `createOnlineAttention`), and folds the request's own new K/V
 * rows straight from the request. The buffer lives in a WebAssembly memory
 * (a {@link WasmHeap}) when the kernel (`attentionKernel`) reads heaps, and
 * the accumulator runs the WebAssembly SIMD kernels on the same heap, so
 * chunks are read from the file straight to where the kernels read them
 * (no copy; plain memory, and the JS kernel, with "js" or where
 * WebAssembly SIMD is missing). RAM beyond that buffer is proportional to
 * the request (its q/k/v, the output and the accumulator), not to the cache.
 *
 * Per request: validate everything first (a bad request changes nothing),
 * then concurrently (a) write the new K/V rows at their positions, fdatasync,
 * and, on a sequence's last layer, record the step in its manifest, and
 * (b) attend over positions [0, start_pos) from disk plus the new rows from
 * the request. Positions below a layer's length are overwritten, so a
 * retried step (after a restart, say) is idempotent.
 */
import { join } from "node:path";
import { rm } from "node:fs/promises";
import {
  attendKvBytesPerPosition,
  attentionDimsKey,
  attentionKernel,
  checkOpenSequence,
  createAttentionNode,
  createWasmHeap,
  describeKvLayout,
  planAttendRequest,
  SequenceKvError,
  type AttendPlan,
  type AttentionDims,
  type AttentionKernel,
  type AttentionKvStore,
  type AttentionNodeContext,
  type KvLayoutDims,
  type OnlineAttention,
  type WasmHeap,
} from "@tessera/attention";
import { CapacityError, f32Tensor, type Service } from "@tessera/core";
import { Code, NodeErrorReason, RpcError, type AttendRequest, type NodeProfile } from "@tessera/proto";
import { appendCrcs, createBlockCheck, expectedCrcs } from "./block-crc.js";
import {
  KvStoreError,
  badBlockError,
  ioError,
  rereadCrcs,
  closeSequenceFiles,
  commitManifest,
  createSequence,
  datasyncFile,
  positionOffset,
  layerFileName,
  manifestBehind,
  readFully,
  scanDataDir,
  sequenceDirName,
  sequenceLength,
  syncDir,
  writeFully,
  type FsyncPolicy,
  type Manifest,
  type StoredSequence,
} from "./kv-store.js";
import { compileStorageNodeOptions, type CompiledStorageNodeOptions, type StorageNodeOptions } from "./options.js";
import { profileStorageNode } from "./profile.js";

/** A running (or not yet started) storage-node. */
export interface StorageNode extends Service {
  readonly role: "storage";
  readonly options: CompiledStorageNodeOptions;
}

/** Positions [firstPos, firstPos + nPos) of one layer file, read with one read. */
export interface Chunk {
  firstPos: number;
  nPos: number;
}

/**
 * Splits positions [0, end) into chunks of at most `halfBytes`: as many
 * whole blocks as fit, or, when not even one block fits, as many positions
 * as fit. Chunks are in file order, so the disk sees sequential reads.
 * @throws RangeError when `halfBytes` cannot hold one position.
 */
export function planChunks(end: number, blockPositions: number, positionBytes: number, halfBytes: number): Chunk[] {
  const fit = Math.floor(halfBytes / positionBytes);
  if (fit < 1)
    throw new RangeError(`a ${halfBytes}-byte half-buffer cannot hold one position (${positionBytes} bytes)`);
  const per = fit >= blockPositions ? fit - (fit % blockPositions) : fit;
  const chunks: Chunk[] = [];
  for (let p = 0; p < end; p += per) chunks.push({ firstPos: p, nPos: Math.min(per, end - p) });
  return chunks;
}

/** Chunks of one or more items packed into one half-buffer: chunk i of `chunks` lands at byte `bufOff[i]`. */
export interface Load {
  chunks: (Chunk & { item: number; bufOff: number })[];
}

/**
 * Packs the chunks of each item (`chunksPerItem[i]`, from
 * {@link planChunks}) into loads of at most `halfBytes`, keeping item and
 * file order, so a step over many short sequences is one load of many
 * reads, which the thread pool runs in parallel.
 */
export function packLoads(chunksPerItem: readonly Chunk[][], halfBytes: number, positionBytes: number): Load[] {
  const loads: Load[] = [];
  let cur: Load | undefined;
  let used = 0;
  chunksPerItem.forEach((chunks, item) => {
    for (const c of chunks) {
      const size = c.nPos * positionBytes;
      if (!cur || used + size > halfBytes) {
        cur = { chunks: [] };
        loads.push(cur);
        used = 0;
      }
      cur.chunks.push({ ...c, item, bufOff: used });
      used += size;
    }
  });
  return loads;
}

/**
 * Waits for every promise, then rejects with the first rejection in array
 * order, if any. Unlike Promise.all it never settles while some of them are
 * still running: I/O into a shared buffer or on files that the caller
 * releases once this settles must be over by then.
 */
async function settleAll(promises: readonly Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === "rejected") throw r.reason;
}

/** A FIFO async mutex: `run` executes its tasks one at a time. */
function createMutex(): <T>(task: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(task: () => Promise<T>) => {
    const p = tail.then(task);
    tail = p.catch(() => undefined);
    return p;
  };
}

/**
 * A failure on one sequence's files as that sequence's own
 * ({@link SequenceKvError}: the Attend response names it, and the caller
 * rebuilds it alone): DISK_FULL for RESOURCE_EXHAUSTED (ENOSPC, EDQUOT,
 * EFBIG), else KV_LOST, with the {@link KvStoreError}'s code and its file
 * in the message after `where` and the sequence. Other errors are returned
 * as they are.
 */
export function sequenceFault(where: string, seqId: string, err: unknown): unknown {
  if (!(err instanceof KvStoreError)) return err;
  const code = err.rpcCode;
  const reason = code === Code.RESOURCE_EXHAUSTED ? NodeErrorReason.DISK_FULL : NodeErrorReason.KV_LOST;
  return new SequenceKvError(seqId, reason, `${where}: sequence "${seqId}": ${err.message}`, { code, cause: err });
}

/**
 * Writes the new K/V rows of every item (one positional write per item:
 * K and V interleaved by position, as the files hold them), makes them
 * durable, updates the block CRCs with the lengths (continued for an
 * append; for an overwrite, the blocks are checked before and their CRCs
 * read back after), and records the step in the
 * manifest on the last layer. A failure is the item's sequence's
 * ({@link sequenceFault}).
 */
async function persist(plan: AttendPlan<StoredSequence>, fsync: FsyncPolicy, where: string): Promise<void> {
  const { layer, dims } = plan;
  const kvRow = dims.nKvHeads * dims.headDim;
  // [total_tokens, 2, n_kv_heads, head_dim]: each token's K row then its V row.
  const staged = new Float32Array(plan.totalTokens * 2 * kvRow);
  for (let r = 0; r < plan.totalTokens; r++) {
    staged.set(plan.k.subarray(r * kvRow, (r + 1) * kvRow), 2 * r * kvRow);
    staged.set(plan.v.subarray(r * kvRow, (r + 1) * kvRow), (2 * r + 1) * kvRow);
  }
  const bytes = new Uint8Array(staged.buffer);
  const positionBytes = 2 * kvRow * 4;
  await settleAll(
    plan.items.map(async (it) => {
      const seq = it.seq;
      const fh = seq.files[layer]!;
      const path = join(seq.dir, layerFileName(layer));
      const src = bytes.subarray(it.row * positionBytes, (it.row + it.nTokens) * positionBytes);
      try {
        // A retried step overwrites committed positions: check their blocks first.
        const overwrites = it.startPos < seq.lengths[layer]!;
        if (overwrites) await rereadCrcs(seq, layer, it.startPos, "verify");
        await writeFully(fh, path, src, positionOffset(seq.geometry, it.startPos));
        if (fsync === "always") await datasyncFile(fh, path);
        const end = it.startPos + it.nTokens;
        const length = seq.lengths[layer]!;
        if (!overwrites) {
          // Lengths and CRCs change together (the manifest records both).
          appendCrcs(seq.crcs[layer]!, seq.geometry.blockPositions, positionBytes, it.startPos, src);
          seq.lengths[layer] = end;
        } else {
          seq.lengths[layer] = Math.max(end, length);
          await rereadCrcs(seq, layer, it.startPos, "recompute");
        }
        // Once per step: when the last layer is written (see kv-store.ts).
        if (layer === seq.layout.nLayers - 1 && manifestBehind(seq)) await commitManifest(seq, fsync);
      } catch (err) {
        throw sequenceFault(where, seq.id, err);
      }
    }),
  );
}

/** Streams stored K/V blocks through one double read buffer into the kernel's accumulators. */
interface KvStreamer {
  /**
   * Attends every item of `plan` into `out` ([total_tokens, n_heads *
   * head_dim] f32): positions [0, start_pos) streamed from its layer file,
   * each block checked against `crcs[item]` ({@link expectedCrcs}) before
   * it is folded, then its own new rows from the request.
   * @throws SequenceKvError naming the sequence, file and block of a read
   *   that failed or a block that does not match its CRC ({@link sequenceFault}).
   */
  attendAll(plan: AttendPlan<StoredSequence>, out: Float32Array, crcs: number[][], where: string): Promise<void>;
  /** Drops the buffer and the accumulators (the node closed). */
  reset(): void;
}

/**
 * The storage-node's streaming attention with `kernel`: a read buffer of 2 x
 * `halfBytes` (in a heap when the kernel reads heaps) and one accumulator
 * per layer shape, held by one request at a time.
 */
function createKvStreamer(kernel: AttentionKernel, halfBytes: number): KvStreamer {
  const streaming = createMutex(); // holders of the read buffer and the accumulators
  let accumulators = new Map<string, OnlineAttention>();
  /**
   * The read buffer: 2 x halfBytes at byte `ptr` of `heap`'s memory (the
   * accumulators' state is in that heap too), or of a plain ArrayBuffer
   * where WebAssembly SIMD is missing. Made on first use, under `streaming`.
   */
  let readBuffer: { heap: WasmHeap | undefined; memory: () => ArrayBufferLike; ptr: number } | undefined;

  /** The read buffer (made on first use); call under `streaming`. */
  function buffer(): NonNullable<typeof readBuffer> {
    if (!readBuffer) {
      const heap = kernel.readsHeap() ? createWasmHeap() : undefined;
      const ptr = heap?.alloc(2 * halfBytes);
      if (heap && ptr !== undefined) {
        readBuffer = { heap, memory: () => heap.buffer, ptr };
      } else {
        const plain = new ArrayBuffer(2 * halfBytes);
        readBuffer = { heap: undefined, memory: () => plain, ptr: 0 };
      }
    }
    return readBuffer;
  }

  /** The accumulator of a layer shape, on the read buffer's heap; call under `streaming`. */
  function accumulatorFor(dims: AttentionDims): OnlineAttention {
    const key = attentionDimsKey(dims);
    let acc = accumulators.get(key);
    if (!acc) {
      accumulators.set(key, (acc = kernel.createOnlineAttention(dims, buffer().heap)));
    }
    return acc;
  }

  /**
   * Attends every item: positions [0, start_pos) streamed from its layer
   * file, then its own new rows from the request. The chunks of all items,
   * in item order, are packed into half-buffer loads (a decode step of many
   * short sequences becomes one load of many reads, which the thread pool
   * runs in parallel); while one half is folded the next load fills the
   * other half.
   */
  async function attendAll(
    plan: AttendPlan<StoredSequence>,
    out: Float32Array,
    crcs: number[][],
    where: string,
  ): Promise<void> {
    const { layer, dims, items } = plan;
    const kvRow = dims.nKvHeads * dims.headDim;
    const positionBytes = 2 * kvRow * 4;
    const checks = items.map((it, i) =>
      createBlockCheck(crcs[i]!, it.seq.geometry.blockPositions, positionBytes, it.startPos),
    );
    /** Checks chunk `c` (in `bytes`) before it is folded. */
    const check = (c: Load["chunks"][number], bytes: Uint8Array) => {
      const bad = checks[c.item]!(c.firstPos, bytes.subarray(c.bufOff, c.bufOff + c.nPos * positionBytes));
      if (!bad) return;
      const seq = items[c.item]!.seq;
      throw sequenceFault(where, seq.id, badBlockError(seq, layer, bad));
    };
    const loads = packLoads(
      items.map((it) => planChunks(it.startPos, it.seq.geometry.blockPositions, positionBytes, halfBytes)),
      halfBytes,
      positionBytes,
    );
    let cur = -1; // the item the accumulator holds
    let online: OnlineAttention | undefined;
    const advanceTo = (i: number) => {
      if (!online) throw new Error("unreachable: no accumulator");
      for (; cur < i;) {
        if (cur >= 0) {
          // The item's own new rows, straight from the request, then its output.
          const it = items[cur]!;
          online.fold(it.startPos, it.nTokens, plan.k, it.row * kvRow, plan.v, it.row * kvRow);
          online.finish(out, it.row);
        }
        cur++;
        const it = items[cur];
        if (it) online.begin({ q: plan.q, qRow: it.row, nQueries: it.nTokens, startPos: it.startPos });
      }
    };
    await streaming(async () => {
      const rb = buffer();
      online = accumulatorFor(dims);
      // Anything that may grow the heap first; then views of it that stay valid for this request.
      online.reserve(items.reduce((n, it) => Math.max(n, it.nTokens), 1));
      const mem = rb.memory();
      const buf = {
        halves: [new Uint8Array(mem, rb.ptr, halfBytes), new Uint8Array(mem, rb.ptr + halfBytes, halfBytes)],
        floats: [
          new Float32Array(mem, rb.ptr, halfBytes / 4),
          new Float32Array(mem, rb.ptr + halfBytes, halfBytes / 4),
        ],
      } as const;
      const load = (l: Load, half: 0 | 1) =>
        settleAll(
          l.chunks.map((c) => {
            const seq = items[c.item]!.seq;
            const path = join(seq.dir, layerFileName(layer));
            return readFully(
              seq.files[layer]!,
              path,
              buf.halves[half],
              c.bufOff,
              c.nPos * positionBytes,
              positionOffset(seq.geometry, c.firstPos),
            ).catch((err: unknown) => {
              throw sequenceFault(where, seq.id, err);
            });
          }),
        );
      let next: Promise<void> | undefined = loads.length > 0 ? load(loads[0]!, 0) : undefined;
      try {
        for (let i = 0; i < loads.length; i++) {
          await next;
          next = i + 1 < loads.length ? load(loads[i + 1]!, ((i + 1) % 2) as 0 | 1) : undefined;
          const f = buf.floats[(i % 2) as 0 | 1];
          for (const c of loads[i]!.chunks) {
            check(c, buf.halves[(i % 2) as 0 | 1]);
            advanceTo(c.item);
            const at = c.bufOff / 4;
            online.fold(c.firstPos, c.nPos, f, at, f, at + kvRow, 2 * kvRow);
          }
        }
      } finally {
        // Never hand the buffer on while a read into it is in flight.
        if (next) await next.catch(() => undefined);
      }
      // Still inside the lock: the accumulator is shared with other streams' requests.
      advanceTo(items.length);
    });
  }

  return {
    attendAll,
    reset() {
      readBuffer = undefined;
      accumulators = new Map();
    },
  };
}

/**
 * The storage-node's KV store (see the file comment): sequences' K/V in
 * files under `opts.dataDir`, attended with the kernel `opts.attentionKernel`
 * names.
 */
function createDiskKvStore(opts: CompiledStorageNodeOptions, node: AttentionNodeContext): AttentionKvStore {
  const sequences = new Map<string, StoredSequence>();
  /** Sequences whose files are damaged, by directory name. */
  const broken = new Map<string, KvStoreError>();
  /** In-flight Attend work per sequence, so CloseSequence and close() wait for it. */
  const busy = new Map<StoredSequence, Set<Promise<unknown>>>();
  const inFlight = new Set<Promise<unknown>>();
  const admin = createMutex(); // OpenSequence / CloseSequence, one at a time

  const where = node.where;
  const reservedBytesOf = (m: Pick<Manifest, "layout" | "maxPositions">) =>
    m.maxPositions * m.layout.nLayers * 2 * m.layout.nKvHeads * m.layout.headDim * 4;
  const usedBytes = () => [...sequences.values()].reduce((a, s) => a + s.reservedBytes, 0);
  /** Half of the buffer, rounded down to whole f32 values. */
  const halfBytes = Math.floor(opts.bufferBytes / 2 / 4) * 4;
  const streamer = createKvStreamer(attentionKernel(opts.attentionKernel), halfBytes);

  function damaged(seqId: string): KvStoreError | undefined {
    const err = broken.get(sequenceDirName(seqId));
    if (!err) return undefined;
    return new KvStoreError(err.path, `${err.detail} (CloseSequence deletes the sequence)`, {
      cause: err,
      context: `${where()}: sequence "${seqId}" cannot be used`,
    });
  }

  function lookup(seqId: string): StoredSequence | undefined {
    const seq = sequences.get(seqId);
    if (seq) return seq;
    const err = damaged(seqId);
    if (err) throw new SequenceKvError(seqId, NodeErrorReason.KV_LOST, err.message, { code: err.rpcCode, cause: err });
    return undefined;
  }

  function track<T>(seqs: readonly StoredSequence[], p: Promise<T>): Promise<T> {
    inFlight.add(p);
    for (const s of seqs) {
      let set = busy.get(s);
      if (!set) busy.set(s, (set = new Set()));
      set.add(p);
    }
    const done = () => {
      inFlight.delete(p);
      for (const s of seqs) busy.get(s)?.delete(p);
    };
    p.then(done, done);
    return p;
  }

  async function openSequence(seqId: string, layout: KvLayoutDims | undefined, maxPositions: number) {
    const existing = sequences.get(seqId);
    const { layout: lay, bytes } = checkOpenSequence(seqId, layout, maxPositions, existing, where(), "stored");
    if (existing) return { length: sequenceLength(existing), reservedBytes: BigInt(existing.reservedBytes) };
    const err = damaged(seqId);
    if (err) throw err;
    const positionBytes = 2 * lay.nKvHeads * lay.headDim * 4;
    if (halfBytes < positionBytes) {
      throw new RpcError(
        Code.FAILED_PRECONDITION,
        `${where()}: bufferBytes ${opts.bufferBytes} cannot stream sequence "${seqId}": each half of it must hold one position's K and V rows, ${positionBytes} bytes`,
      );
    }
    const available = opts.capacityBytes - usedBytes();
    if (bytes > available) {
      throw new CapacityError(
        `${where()}: cannot open sequence "${seqId}" (max_positions ${maxPositions}, ${describeKvLayout(lay)})`,
        bytes,
        available,
      );
    }
    const seq = await createSequence(
      opts.dataDir,
      seqId,
      lay,
      maxPositions,
      opts.blockPositions,
      bytes,
      opts.fsync,
    ).catch((err: unknown) => {
      // Named, with its code; a full disk says so (DISK_FULL), so the caller places it elsewhere.
      const e = ioError(join(opts.dataDir, sequenceDirName(seqId)), `creating sequence "${seqId}"`, err);
      if (e.rpcCode !== Code.RESOURCE_EXHAUSTED) throw e;
      throw new RpcError(Code.RESOURCE_EXHAUSTED, `${where()}: ${e.message}`, {
        cause: e,
        reason: NodeErrorReason.DISK_FULL,
      });
    });
    sequences.set(seqId, seq);
    return { length: 0, reservedBytes: BigInt(bytes) };
  }

  async function closeSequence(seqId: string): Promise<void> {
    const seq = sequences.get(seqId);
    if (seq) {
      sequences.delete(seqId); // new requests now see an unknown sequence
      await Promise.allSettled([...(busy.get(seq) ?? [])]);
      busy.delete(seq);
      await closeSequenceFiles(seq);
      await rm(seq.dir, { recursive: true, force: true });
    } else {
      const name = sequenceDirName(seqId);
      if (!broken.has(name)) return;
      broken.delete(name);
      await rm(join(opts.dataDir, name), { recursive: true, force: true });
    }
    if (opts.fsync === "always") await syncDir(opts.dataDir);
  }

  /**
   * Validates, then writes the new rows (durably) and attends over the
   * stored ones plus the new ones, concurrently.
   */
  async function attend(req: AttendRequest) {
    const plan = planAttendRequest(req, lookup, where());
    const oRow = plan.dims.nHeads * plan.dims.headDim;
    const out = new Float32Array(plan.totalTokens * oRow);
    // Settled, not Promise.all: the request ends (and CloseSequence or
    // close() may close its files) only when both are done.
    // The CRCs the reads check, before this request's writes change the last blocks'.
    const crcs = plan.items.map((it) =>
      expectedCrcs(it.seq.crcs[plan.layer]!, it.seq.geometry.blockPositions, it.startPos, it.seq.lengths[plan.layer]!),
    );
    const work = settleAll([persist(plan, opts.fsync, where()), streamer.attendAll(plan, out, crcs, where())]);
    await track(
      plan.items.map((i) => i.seq),
      work,
    );
    return f32Tensor(out, [plan.totalTokens, oRow]);
  }

  return {
    /**
     * Creates the sequence's files, or finds them (its persisted length):
     * RESOURCE_EXHAUSTED past capacity, or for a full disk with the reason
     * DISK_FULL (RpcError.reason, in its trailers), naming the
     * directory; INVALID_ARGUMENT for another layout, DATA_LOSS naming the
     * file when its files are damaged.
     */
    openSequence: (seqId, layout, maxPositions) => admin(() => openSequence(seqId, layout, maxPositions)),
    /** Waits for the sequence's running requests, then deletes its files (damaged ones too); unknown ids succeed. */
    closeSequence: (seqId) => admin(() => closeSequence(seqId)),
    attend,
    /** Positions [0, start_pos) of each item's layer file, from disk (the new rows come with the request). */
    kvBytesRead(req: AttendRequest) {
      const row = attendKvBytesPerPosition(req);
      return req.items.reduce((b, it) => b + it.startPos * row, 0);
    },
    usedBytes,
    /** Usable sequences (damaged ones are not counted). */
    sequenceCount: () => sequences.size,
    /** As configured (the node does not measure its disk for Info). */
    readBytesPerSecond: () => opts.readBytesPerSecond,
    /** Finds the sequences stored in the data directory (after the profile, which creates it). */
    async start() {
      const found = await scanDataDir(opts.dataDir, reservedBytesOf);
      for (const s of found.sequences) sequences.set(s.id, s);
      for (const [name, err] of found.broken) broken.set(name, err);
    },
    async close() {
      // Let running requests finish their writes before the files close.
      await Promise.allSettled([...inFlight]);
      await admin(async () => {
        // Record what the last, unfinished steps wrote, then let go of the files.
        await Promise.allSettled(
          [...sequences.values()].filter(manifestBehind).map((s) => commitManifest(s, opts.fsync)),
        );
        await Promise.allSettled([...sequences.values()].map(closeSequenceFiles));
        sequences.clear();
        broken.clear();
      });
      streamer.reset();
    },
  };
}

/**
 * The advertised profile of a given one: profile_seconds 0 (not measured
 * here) and this node's price, capacity and buffer size; undefined for
 * "measure" (made in start()) and "off".
 */
function givenProfile(opts: CompiledStorageNodeOptions): NodeProfile | undefined {
  if (typeof opts.profile !== "object" || opts.profile.figures.case !== "storage") return undefined;
  return {
    ...opts.profile,
    pricePerHour: opts.pricePerHour,
    profileSeconds: 0,
    figures: {
      case: "storage",
      value: {
        ...opts.profile.figures.value,
        capacityBytes: BigInt(opts.capacityBytes),
        bufferBytes: BigInt(opts.bufferBytes),
      },
    },
  };
}

/**
 * Creates a storage-node: its on-disk KV store behind the attention-node
 * shell. Nothing is touched on disk until `start()`, which measures the
 * profile when asked ({@link profileStorageNode}: the data directory's disk
 * and the chosen kernel), scans `dataDir` for the sequences stored there
 * and then serves.
 * @throws ConfigError naming the option when `options` are invalid.
 */
export function createStorageNode(options: StorageNodeOptions): StorageNode {
  const opts = compileStorageNodeOptions(options);
  const service = createAttentionNode({
    role: "storage",
    host: opts.host,
    port: opts.port,
    shutdownGraceMs: opts.shutdownGraceMs,
    capacityBytes: opts.capacityBytes,
    pricePerHour: opts.pricePerHour,
    profile: givenProfile(opts),
    measureProfile: opts.profile === "measure" ? () => profileStorageNode(opts) : undefined,
    createStore: (node) => createDiskKvStore(opts, node),
  });
  return Object.assign(service, { options: opts });
}
