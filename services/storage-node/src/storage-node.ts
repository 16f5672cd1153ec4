/**
 * The storage-node: the `tessera.v1.Attention` service with each sequence's
 * KV cache in files under `dataDir` (layout, manifest and fsync policy:
 * see kv-store.ts). Attention never reads a sequence's cache into memory:
 * it streams the blocks of positions a request needs through one reusable
 * buffer of at most `bufferBytes` (two halves: the next chunk is read from
 * disk while the current one is folded into an online-softmax accumulator,
 * core's {@link createOnlineAttention}), and folds the request's own new K/V
 * rows straight from the request. The buffer lives in a WebAssembly memory
 * (a {@link WasmHeap}) and the accumulator runs core's WebAssembly SIMD
 * kernels on the same heap, so chunks are read from the file straight to
 * where the kernels read them (no copy; plain memory and the JS kernel
 * where WebAssembly SIMD is missing). RAM beyond that buffer is proportional to
 * the request (its q/k/v, the output and the accumulator), not to the cache.
 *
 * Per request: validate everything first (a bad request changes nothing),
 * then concurrently (a) write the new K/V rows at their positions, fdatasync,
 * and, on a sequence's last layer, record the step in its manifest, and
 * (b) attend over positions [0, start_pos) from disk plus the new rows from
 * the request. Positions below a layer's length are overwritten, so a
 * retried step (after a restart, say) is idempotent.
 */
import { watchKvBytes } from "@tessera/telemetry";
import { join, resolve } from "node:path";
import { rm } from "node:fs/promises";
import {
  attendKvBytesPerPosition,
  traceAttend,
  answerAttend,
  CapacityError,
  ConfigError,
  checkOpenSequence,
  attentionDimsKey,
  createOnlineAttention,
  createWasmHeap,
  describeKvLayout,
  f32Tensor,
  parseByteSize,
  planAttendRequest,
  type AttendPlan,
  type AttentionDims,
  type AttentionKernel,
  type KvLayoutDims,
  type OnlineAttention,
  type Service,
  type WasmHeap,
} from "@tessera/core";
import { createGrpcService, createRequestLoops } from "@tessera/rpc";
import {
  Attention,
  Code,
  RpcError,
  addService,
  type AttendRequest,
  type AttendResponseSchema,
  type MessageInitShape,
  type ServiceImpl,
  type NodeProfile,
} from "@tessera/proto";
import {
  KvStoreError,
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
import { checkStorageProfile, profileStorageNode } from "./profile.js";

/** gRPC service name the health service reports on. */
export const ATTENTION_SERVICE_NAME = "tessera.v1.Attention";

/** Options of a storage-node as a user gives them; see {@link compileStorageNodeOptions}. */
export interface StorageNodeOptions {
  /** Directory holding the KV cache files; created if missing. Required. */
  dataDir: string;
  /** Address to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number | string;
  /**
   * RAM used to stream K/V blocks during attention, bytes or a size
   * ("64MiB"). Each half (one is read while the other is attended over)
   * must hold one position's K and V rows of a sequence's layout.
   * @default 64 MiB
   */
  bufferBytes?: number | string;
  /** Positions per block in the layer files of new sequences. @default 256 */
  blockPositions?: number;
  /** Disk bytes of KV cache this node may hold, bytes or a size. @default 64 GiB */
  capacityBytes?: number | string;
  /** When writes reach the disk; see kv-store.ts. @default "always" */
  fsync?: FsyncPolicy;
  /** How long drain() lets open calls finish before forcing, in ms. @default 5000 */
  drainGraceMs?: number;
  /**
   * Attention kernel: "wasm" (WebAssembly SIMD on a read buffer in wasm
   * memory; JS where WebAssembly SIMD is missing) or "js" (the scalar f64
   * kernel, for comparison in benchmarks). @default "wasm"
   */
  attentionKernel?: AttentionKernel;
  /**
   * What this node costs, in US dollars per hour; advertised by Info so the
   * coordinator can place KV caches where a token is cheapest. 0 = unknown.
   * @default 0
   */
  pricePerHour?: number;
  /**
   * Bytes/s this node streams its KV cache at, as the operator measured or
   * expects it (the node does not measure its disk); advertised by Info.
   * 0 = unknown. @default 0
   */
  readBytesPerSecond?: number;
  /**
   * The node's profile, advertised by Info: "measure" measures it in
   * `start()` before the port is bound ({@link profileStorageNode}: the
   * data directory's disk, one to a few seconds), "off" advertises none, a
   * NodeProfile (of role "storage", e.g. read from a file `--profile-only`
   * wrote) is advertised as given, with profile_seconds 0 and this node's
   * price, capacity and buffer size. @default "off"
   */
  profile?: "measure" | "off" | NodeProfile;
}

/** Validated, defaulted, frozen storage-node options (sizes in bytes, times in ms, dataDir absolute). */
export interface CompiledStorageNodeOptions {
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  readonly bufferBytes: number;
  readonly blockPositions: number;
  readonly capacityBytes: number;
  readonly fsync: FsyncPolicy;
  readonly drainGraceMs: number;
  readonly attentionKernel: AttentionKernel;
  /** $/h; 0 = unknown. */
  readonly pricePerHour: number;
  /** bytes/s; 0 = unknown. */
  readonly readBytesPerSecond: number;
  /** "measure", "off" or the profile to advertise (role "storage"). */
  readonly profile: "measure" | "off" | NodeProfile;
}

/** Smallest accepted bufferBytes; a layout may need more (checked at OpenSequence). */
export const MIN_BUFFER_BYTES = 1024;

/**
 * Applies defaults and validates once (Temporal's `compileWorkerOptions`
 * pattern).
 * @throws ConfigError naming the option when a value is invalid.
 */
export function compileStorageNodeOptions(options: StorageNodeOptions): CompiledStorageNodeOptions {
  if (typeof options?.dataDir !== "string" || options.dataDir.length === 0) {
    throw new ConfigError("dataDir", "a directory for the KV cache files is required");
  }
  const host = options.host ?? "127.0.0.1";
  if (typeof host !== "string" || host.length === 0)
    throw new ConfigError("host", `must be a host name or address, got ${String(host)}`);
  const port = typeof options.port === "string" ? Number(options.port) : (options.port ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new ConfigError("port", `must be an integer 0..65535, got ${String(options.port)}`);
  const bufferBytes = parseByteSize("bufferBytes", options.bufferBytes ?? 64 * 1024 * 1024);
  if (bufferBytes < MIN_BUFFER_BYTES)
    throw new ConfigError("bufferBytes", `must be at least ${MIN_BUFFER_BYTES} bytes, got ${bufferBytes}`);
  const blockPositions = options.blockPositions ?? 256;
  if (!Number.isInteger(blockPositions) || blockPositions < 1) {
    throw new ConfigError("blockPositions", `must be a positive integer, got ${String(options.blockPositions)}`);
  }
  const fsync = options.fsync ?? "always";
  if (fsync !== "always" && fsync !== "never")
    throw new ConfigError("fsync", `must be "always" or "never", got ${JSON.stringify(fsync)}`);
  const drainGraceMs = options.drainGraceMs ?? 5000;
  if (!Number.isInteger(drainGraceMs) || drainGraceMs < 0) {
    throw new ConfigError("drainGraceMs", `must be a non-negative integer, got ${String(options.drainGraceMs)}`);
  }
  const attentionKernel = options.attentionKernel ?? "wasm";
  if (attentionKernel !== "wasm" && attentionKernel !== "js") {
    throw new ConfigError("attentionKernel", `must be "wasm" or "js", got ${JSON.stringify(attentionKernel)}`);
  }
  const profile = options.profile ?? "off";
  if (typeof profile === "object") checkStorageProfile(profile);
  else if (profile !== "measure" && profile !== "off")
    throw new ConfigError("profile", `must be "measure", "off" or a NodeProfile, got ${JSON.stringify(profile)}`);
  const nonNegative = (name: string, v: number | undefined, dflt = 0) => {
    const n = v ?? dflt;
    if (typeof n !== "number" || !Number.isFinite(n) || n < 0)
      throw new ConfigError(name, `must be a finite number >= 0, got ${String(v)}`);
    return n;
  };
  return Object.freeze({
    dataDir: resolve(options.dataDir),
    host,
    port,
    bufferBytes,
    blockPositions,
    capacityBytes: parseByteSize("capacityBytes", options.capacityBytes ?? 64 * 1024 ** 3),
    fsync,
    drainGraceMs,
    attentionKernel,
    pricePerHour: nonNegative(
      "pricePerHour",
      options.pricePerHour,
      typeof profile === "object" ? profile.pricePerHour : 0,
    ),
    readBytesPerSecond: nonNegative("readBytesPerSecond", options.readBytesPerSecond),
    profile,
  });
}

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
 * Creates a storage-node. Nothing is touched on disk until `start()`, which
 * scans `dataDir` for the sequences stored there and then serves.
 * @throws ConfigError naming the option when `options` are invalid.
 */
export function createStorageNode(options: StorageNodeOptions): StorageNode {
  const opts = compileStorageNodeOptions(options);
  const sequences = new Map<string, StoredSequence>();
  /** Sequences whose files are damaged, by directory name. */
  const broken = new Map<string, KvStoreError>();
  /** In-flight Attend work per sequence, so CloseSequence and close() wait for it. */
  const busy = new Map<StoredSequence, Set<Promise<unknown>>>();
  const inFlight = new Set<Promise<unknown>>();
  const admin = createMutex(); // OpenSequence / CloseSequence, one at a time
  const streaming = createMutex(); // holders of the read buffer and the accumulators
  let accumulators = new Map<string, OnlineAttention>();
  const attendLoops = createRequestLoops();
  /**
   * The read buffer: 2 x halfBytes at byte `ptr` of `heap`'s memory (the
   * accumulators' state is in that heap too), or of a plain ArrayBuffer
   * where WebAssembly SIMD is missing. Made on first use, under `streaming`.
   */
  let readBuffer: { heap: WasmHeap | undefined; memory: () => ArrayBufferLike; ptr: number } | undefined;

  const address = () => service.address;
  const where = () => `storage-node ${address()}`;
  const reservedBytesOf = (m: Pick<Manifest, "layout" | "maxPositions">) =>
    m.maxPositions * m.layout.nLayers * 2 * m.layout.nKvHeads * m.layout.headDim * 4;
  const usedBytes = () => [...sequences.values()].reduce((a, s) => a + s.reservedBytes, 0);
  /** Half of the buffer, rounded down to whole f32 values. */
  const halfBytes = Math.floor(opts.bufferBytes / 2 / 4) * 4;

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
    if (err) throw err;
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
    const seq = await createSequence(opts.dataDir, seqId, lay, maxPositions, opts.blockPositions, bytes, opts.fsync);
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
   * Writes the new K/V rows of every item (one positional write per item:
   * K and V interleaved by position, as the files hold them), makes them
   * durable, and records the step in the manifest on the last layer.
   */
  async function persist(plan: AttendPlan<StoredSequence>): Promise<void> {
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
        await writeFully(fh, path, src, positionOffset(seq.geometry, it.startPos));
        if (opts.fsync === "always") await datasyncFile(fh, path);
        const end = it.startPos + it.nTokens;
        if (end > seq.lengths[layer]!) seq.lengths[layer] = end;
        // Once per step: when the last layer is written (see kv-store.ts).
        if (layer === seq.layout.nLayers - 1 && manifestBehind(seq)) await commitManifest(seq, opts.fsync);
      }),
    );
  }

  /** The read buffer (made on first use); call under `streaming`. */
  function buffer(): NonNullable<typeof readBuffer> {
    if (!readBuffer) {
      const heap = opts.attentionKernel === "wasm" ? createWasmHeap() : undefined;
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
      const heap = buffer().heap;
      accumulators.set(key, (acc = createOnlineAttention(dims, heap ? { heap } : { kernel: "js" })));
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
  async function attendAll(plan: AttendPlan<StoredSequence>, out: Float32Array): Promise<void> {
    const { layer, dims, items } = plan;
    const kvRow = dims.nKvHeads * dims.headDim;
    const positionBytes = 2 * kvRow * 4;
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
            );
          }),
        );
      let next: Promise<void> | undefined = loads.length > 0 ? load(loads[0]!, 0) : undefined;
      try {
        for (let i = 0; i < loads.length; i++) {
          await next;
          next = i + 1 < loads.length ? load(loads[i + 1]!, ((i + 1) % 2) as 0 | 1) : undefined;
          const f = buf.floats[(i % 2) as 0 | 1];
          for (const c of loads[i]!.chunks) {
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

  function attend(req: AttendRequest): Promise<MessageInitShape<typeof AttendResponseSchema>> {
    return answerAttend(req, { role: "storage", address: address() }, async () => {
      const plan = planAttendRequest(req, lookup, where());
      const oRow = plan.dims.nHeads * plan.dims.headDim;
      const out = new Float32Array(plan.totalTokens * oRow);
      // Settled, not Promise.all: the request ends (and CloseSequence or
      // close() may close its files) only when both are done.
      const work = settleAll([persist(plan), attendAll(plan, out)]);
      await track(
        plan.items.map((i) => i.seq),
        work,
      );
      return f32Tensor(out, [plan.totalTokens, oRow]);
    });
  }

  /**
   * The advertised profile: measured in start() ("measure"), none ("off"),
   * or the given one with profile_seconds 0 (not measured here) and this
   * node's price, capacity and buffer size.
   */
  let profile: NodeProfile | undefined =
    typeof opts.profile === "object" && opts.profile.figures.case === "storage"
      ? {
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
        }
      : undefined;

  /** attend() in a span when the request carries a trace context; KV bytes read: positions [0, start_pos) of each item's layer file, from disk (the new rows come with the request). */
  const tracedAttend = (req: AttendRequest) =>
    traceAttend(
      "storage",
      req,
      () => {
        const row = attendKvBytesPerPosition(req);
        return req.items.reduce((b, it) => b + it.startPos * row, 0);
      },
      attend,
    );

  const impl: ServiceImpl<typeof Attention> = {
    /**
     * Creates the sequence's files, or finds them (its persisted length):
     * RESOURCE_EXHAUSTED past capacity, INVALID_ARGUMENT for another layout,
     * DATA_LOSS naming the file when its files are damaged.
     */
    openSequence(req) {
      return admin(() => openSequence(req.seqId, req.layout, req.maxPositions));
    },
    /** Waits for the sequence's running requests, then deletes its files (damaged ones too); unknown ids succeed. */
    async closeSequence(req) {
      await admin(() => closeSequence(req.seqId));
      return {};
    },
    /**
     * One response per request, in order; a bad request gets an `error`
     * response and the stream goes on. A drain lets the request in flight
     * finish (its writes are then on disk), then ends the stream with OK;
     * requests it had not read yet are not answered (the client retries
     * the step once the node is back).
     */
    attend(call) {
      return attendLoops.serve(call, tracedAttend);
    },
    /**
     * Capacity and reserved disk bytes (sum of usable sequences'
     * reservations), configured price ($/h), read bandwidth (bytes/s) and
     * the profile (unset when off).
     */
    async info() {
      return {
        profile,
        role: "storage",
        capacityBytes: BigInt(opts.capacityBytes),
        usedBytes: BigInt(usedBytes()),
        sequences: sequences.size,
        pricePerHour: opts.pricePerHour,
        readBytesPerSecond: opts.readBytesPerSecond,
      };
    },
  };

  // The KV gauges (tessera_kv_*_bytes) read this node from start to close.
  let unwatchKv = () => {};
  const service = createGrpcService({
    role: "storage",
    name: "storage-node",
    host: opts.host,
    port: opts.port,
    serviceNames: [ATTENTION_SERVICE_NAME],
    register: (s) => addService(s, Attention, impl),
    graceMs: opts.drainGraceMs,
    // Attend streams never end by themselves: end them (with OK, after the
    // request in flight) so that shutdown does not wait out the grace period
    // and then cancel them.
    onDrain: () => attendLoops.stop(opts.drainGraceMs),
    beforeShutdown: () => attendLoops.stop(),
    async onStart() {
      unwatchKv = watchKvBytes(() => ({
        address: address(),
        usedBytes: usedBytes(),
        capacityBytes: opts.capacityBytes,
      }));
      // Before the port is bound (no request competes) and before the scan
      // (the data directory exists after it).
      if (opts.profile === "measure") profile = await profileStorageNode(opts);
      const found = await scanDataDir(opts.dataDir, reservedBytesOf);
      for (const s of found.sequences) sequences.set(s.id, s);
      for (const [name, err] of found.broken) broken.set(name, err);
    },
    async onClose() {
      unwatchKv();
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
      readBuffer = undefined;
      accumulators = new Map();
    },
  });
  return Object.assign(service, { options: opts });
}
