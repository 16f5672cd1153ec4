/**
 * The memory-node: the `tessera.v1.Attention` service (the attention-node
 * shell of @tessera/attention) with each sequence's KV cache in RAM: this
 * file is its KV store. Per sequence and layer it holds one K and one V buffer,
 * [max_positions, n_kv_heads, head_dim] f32 each, allocated (and counted
 * against `capacityBytes`) in full at OpenSequence, so a sequence that was
 * admitted never runs the node out of memory later. The buffers live in
 * WebAssembly memories ({@link WasmHeap}s of up to 4 GiB, the wasm32 limit;
 * a layer's K and V go into the first heap with room, a new heap is made
 * when none has), so attention reads them in place with the WebAssembly
 * SIMD kernels ({@link attendKvCacheInHeap}); no per-step copies. Freed
 * buffers are reused by later sequences; a heap's memory is not returned to
 * the OS until the node closes. With a kernel that reads no heap
 * (`--attention-kernel js`), or where WebAssembly SIMD is missing (or
 * head_dim is not a multiple of 4), the buffers are plain Float32Arrays and
 * attention runs the kernel's `attendKvCache`. Attention runs on
 * the event-loop thread and, for items with enough K/V to be worth it
 * (SPLIT_MIN_BYTES), on `attentionThreads - 1` worker threads too
 * ({@link createAttentionWorkers}: each sequence's positions split between
 * the threads, partial softmax states combined), so one step uses every
 * core; the call stays synchronous. A failing worker does not fail the
 * request: the pool falls back to the event-loop thread (and logs why).
 *
 * Besides the KV buffers (counted against `capacityBytes`), each heap holds
 * the kernels' scratch: per layer shape and thread, block buffers and state
 * for ATTENTION_QUERY_CHUNK queries ({@link wasmAttentionBytes};
 * prefills go in chunks of that many queries), so it is bounded
 * whatever the prompt length. It shares the KV's heap because the kernels
 * address one memory (a wasm module of Node 20 imports one). The event-loop
 * thread's share is made at OpenSequence: a sequence that was admitted can
 * always be attended, and a heap with no room for it refuses the sequence
 * (RESOURCE_EXHAUSTED); workers whose share does not fit are not used.
 *
 * Length of a sequence = the minimum over its layers of the positions
 * written. Layers are written one Attend request at a time, so in the middle
 * of a step the first layers are one position ahead; the minimum is the
 * number of positions every layer holds, the one a caller can resume from.
 */
import {
  attendKvBytesPerPosition,
  attentionKernel,
  checkOpenSequence,
  createAttentionNode,
  createAttentionScratch,
  createWasmHeap,
  describeKvLayout,
  planAttendRequest,
  ATTENTION_QUERY_CHUNK,
  WASM_HEAP_MAX_BYTES,
  wasmAttentionBytes,
  type AttendTarget,
  type AttentionDims,
  type AttentionKvStore,
  type AttentionNodeContext,
  type AttentionWorkers,
  type HeapAttendItem,
  type KvLayoutDims,
  type WasmHeap,
} from "@tessera/attention";
import { CapacityError, f32Tensor, tensorWireDtype, type Service } from "@tessera/core";
import { measureReadBandwidth } from "@tessera/profiling";
import type { AttendRequest, NodeProfile } from "@tessera/proto";
import { compileMemoryNodeOptions, type CompiledMemoryNodeOptions, type MemoryNodeOptions } from "./options.js";
import { profileMemoryNode } from "./profile.js";

/** A running (or not yet started) memory-node. */
export interface MemoryNode extends Service {
  readonly role: "memory";
  readonly options: CompiledMemoryNodeOptions;
}

/**
 * One layer's K and V buffers, [max_positions, n_kv_heads, head_dim] f32
 * each: at byte kPtr and vPtr of `heap`, or (no heap) plain arrays. k()/v()
 * make views; a heap's (shared) memory never detaches them when it grows,
 * they just do not see the new pages (these buffers lie below them anyway).
 */
interface KvSlot {
  readonly heap: WasmHeap | undefined;
  readonly kPtr: number;
  readonly vPtr: number;
  k(): Float32Array;
  v(): Float32Array;
}

/** One sequence's KV cache. */
interface Sequence extends AttendTarget {
  readonly id: string;
  readonly layout: KvLayoutDims;
  readonly maxPositions: number;
  readonly reservedBytes: number;
  /** Per layer. */
  readonly slots: KvSlot[];
  /** Positions written, per layer. */
  readonly lengths: Uint32Array;
}

/** A layer's K and V: in the first heap with room (a new one when none has), else plain arrays. */
function allocSlot(heaps: WasmHeap[], floats: number, useWasm: boolean): KvSlot {
  const bytes = 4 * floats;
  if (useWasm) {
    for (let i = 0; i <= heaps.length; i++) {
      let heap = heaps[i];
      if (!heap) {
        heap = createWasmHeap();
        if (!heap) break; // no WebAssembly SIMD here
        heaps.push(heap);
      }
      const ptr = heap.alloc(2 * bytes);
      if (ptr !== undefined) {
        const h = heap;
        return {
          heap: h,
          kPtr: ptr,
          vPtr: ptr + bytes,
          k: () => new Float32Array(h.buffer, ptr, floats),
          v: () => new Float32Array(h.buffer, ptr + bytes, floats),
        };
      }
      if (heap.usedBytes === 0) break; // an empty heap cannot hold it: the OS refused
    }
  }
  const k = new Float32Array(floats);
  const v = new Float32Array(floats);
  return { heap: undefined, kPtr: 0, vPtr: 0, k: () => k, v: () => v };
}

function freeSlot(slot: KvSlot): void {
  slot.heap?.free(slot.kPtr);
}

function sequenceLength(seq: Sequence): number {
  return seq.lengths.reduce((a, b) => Math.min(a, b), Number.MAX_SAFE_INTEGER);
}

/**
 * The memory-node's KV store (see the file comment): sequences' K/V in RAM,
 * attended with the kernel `opts.attentionKernel` names.
 */
function createRamKvStore(
  opts: CompiledMemoryNodeOptions,
  log: (line: string) => void,
  node: AttentionNodeContext,
): AttentionKvStore {
  const kernel = attentionKernel(opts.attentionKernel);
  const sequences = new Map<string, Sequence>();
  const scratch = createAttentionScratch();
  /**
   * f32 buffers reused by every Attend request (grown on demand): the
   * decoded f16 q/k/v and the f32 output of an f16 request, all dead once
   * the (synchronous) request is answered. Fresh arrays per request made
   * about 1.3 MB of garbage per layer at batch 64 (dim 2048) and the
   * node's collector ran on the decode critical path.
   */
  const buffers = new Map<string, Float32Array>();
  const reusable = (name: string, n: number): Float32Array => {
    let b = buffers.get(name);
    if (!b || b.length < n) buffers.set(name, (b = new Float32Array(n)));
    return b.length === n ? b : b.subarray(0, n);
  };
  /** WebAssembly memories holding the KV buffers. */
  let heaps: WasmHeap[] = [];
  /**
   * Attention per heap: kernel state per layer shape, and worker threads,
   * started when a request first has enough K/V to split.
   */
  let pools = new Map<WasmHeap, AttentionWorkers>();
  let usedBytes = 0;
  /** Advertised read bandwidth (bytes/s): configured, else from the profile, else measured in start(). */
  let readBytesPerSecond = opts.readBytesPerSecond;
  if (typeof opts.profile === "object" && opts.profile.figures.case === "memory")
    readBytesPerSecond ??= opts.profile.figures.value.readBytesPerSecond || undefined;
  const where = node.where;

  function poolFor(heap: WasmHeap): AttentionWorkers {
    let pool = pools.get(heap);
    if (!pool) pools.set(heap, (pool = kernel.createHeapAttention(heap, opts.attentionThreads, { log })));
    return pool;
  }

  /**
   * The event-loop thread's attention state of `dims` in `heap` (bounded;
   * made once per heap and shape).
   * @throws CapacityError naming the node when the heap has no room for it.
   */
  function prepareAttention(heap: WasmHeap, dims: AttentionDims, what: string): void {
    try {
      poolFor(heap).prepare(dims);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw new CapacityError(
        `${where()}: no room in its wasm heap for attention scratch ${what} (${err.message})`,
        wasmAttentionBytes(dims, ATTENTION_QUERY_CHUNK),
        WASM_HEAP_MAX_BYTES - heap.usedBytes,
      );
    }
  }

  /** Reserves and allocates; RESOURCE_EXHAUSTED past capacity, INVALID_ARGUMENT for another layout. */
  async function openSequence(seqId: string, layout: KvLayoutDims | undefined, maxPositions: number) {
    const existing = sequences.get(seqId);
    const { layout: lay, bytes } = checkOpenSequence(seqId, layout, maxPositions, existing, where(), "open");
    if (existing) return { length: sequenceLength(existing), reservedBytes: BigInt(existing.reservedBytes) };
    const available = opts.capacityBytes - usedBytes;
    if (bytes > available) {
      throw new CapacityError(
        `${where()}: cannot open sequence "${seqId}" (max_positions ${maxPositions}, ${describeKvLayout(lay)})`,
        bytes,
        available,
      );
    }
    const rowFloats = maxPositions * lay.nKvHeads * lay.headDim;
    const slots: KvSlot[] = [];
    try {
      for (let l = 0; l < lay.nLayers; l++) slots.push(allocSlot(heaps, rowFloats, kernel.readsHeap(lay)));
    } catch (err) {
      slots.forEach(freeSlot);
      // The capacity option promised more than the process can allocate.
      throw new CapacityError(
        `${where()}: cannot allocate sequence "${seqId}": ${(err as Error).message}`,
        bytes,
        available,
      );
    }
    try {
      // The event-loop thread's attention scratch in each heap the sequence uses (bounded, once per heap and shape).
      for (const heap of new Set(slots.map((s) => s.heap))) {
        if (heap) prepareAttention(heap, lay, `for sequence "${seqId}" (${describeKvLayout(lay)})`);
      }
    } catch (err) {
      slots.forEach(freeSlot);
      throw err;
    }
    const lengths = new Uint32Array(lay.nLayers);
    const layoutCopy: KvLayoutDims = Object.freeze({
      nLayers: lay.nLayers,
      nHeads: lay.nHeads,
      nKvHeads: lay.nKvHeads,
      headDim: lay.headDim,
    });
    sequences.set(seqId, {
      id: seqId,
      layout: layoutCopy,
      maxPositions,
      reservedBytes: bytes,
      slots,
      lengths,
      layerLength: (layer) => lengths[layer] ?? 0,
    });
    usedBytes += bytes;
    return { length: 0, reservedBytes: BigInt(bytes) };
  }

  /** Frees the buffers at once; unknown ids succeed. */
  async function closeSequence(seqId: string): Promise<void> {
    const seq = sequences.get(seqId);
    if (!seq) return;
    sequences.delete(seqId);
    seq.slots.forEach(freeSlot);
    usedBytes -= seq.reservedBytes;
  }

  /**
   * Appends then attends, synchronously: a request is applied whole or, when
   * validation fails, not at all.
   */
  function attend(req: AttendRequest) {
    const plan = planAttendRequest(req, (id) => sequences.get(id), where(), reusable);
    const { dims, layer } = plan;
    const kvRow = dims.nKvHeads * dims.headDim;
    const oRow = dims.nHeads * dims.headDim;
    // An f16 request's o is encoded to fresh wire bytes before this
    // returns (answerAttend), so its f32 output can be reused; an f32
    // request's goes out as it is.
    const n = plan.totalTokens * oRow;
    const out = tensorWireDtype(req.q) === "f16" ? reusable("o", n) : new Float32Array(n);
    /** The items whose cache is in a heap, per heap. */
    const inHeap = new Map<WasmHeap, HeapAttendItem[]>();
    for (const it of plan.items) {
      const slot = it.seq.slots[layer]!;
      const kc = slot.k();
      const vc = slot.v();
      // Write first: each query attends over its own K/V too. Rows at
      // positions < the current length are overwritten (a retried step).
      kc.set(plan.k.subarray(it.row * kvRow, (it.row + it.nTokens) * kvRow), it.startPos * kvRow);
      vc.set(plan.v.subarray(it.row * kvRow, (it.row + it.nTokens) * kvRow), it.startPos * kvRow);
      const lengths = it.seq.lengths;
      lengths[layer] = Math.max(lengths[layer]!, it.startPos + it.nTokens);
      const queries = { q: plan.q, qRow: it.row, nQueries: it.nTokens, startPos: it.startPos };
      if (slot.heap) {
        const items = inHeap.get(slot.heap) ?? [];
        items.push({ queries, kPtr: slot.kPtr, vPtr: slot.vPtr, outRow: it.row });
        inHeap.set(slot.heap, items);
      } else kernel.attendKvCache(dims, queries, kc, vc, out, it.row, scratch);
    }
    for (const [heap, items] of inHeap) {
      // Made at OpenSequence already; this only finds it.
      prepareAttention(heap, dims, `(n_heads ${dims.nHeads}, n_kv_heads ${dims.nKvHeads}, head_dim ${dims.headDim})`);
      // The workers when the items have enough K/V to split (SPLIT_MIN_BYTES), else this thread.
      poolFor(heap).attend(dims, items, out);
    }
    return f32Tensor(out, [plan.totalTokens, oRow]);
  }

  return {
    openSequence,
    closeSequence,
    attend,
    /** Positions [0, start_pos + n_tokens) of each item's cache, from RAM. */
    kvBytesRead(req) {
      const row = attendKvBytesPerPosition(req);
      return req.items.reduce((b, it) => b + (it.startPos + it.nTokens) * row, 0);
    },
    usedBytes: () => usedBytes,
    sequenceCount: () => sequences.size,
    readBytesPerSecond: () => readBytesPerSecond ?? 0,
    // The read bandwidth Info advertises, unless configured: the measured
    // profile's, else measured now (tens of ms).
    async start(measured: NodeProfile | undefined) {
      if (measured?.figures.case === "memory") readBytesPerSecond ??= measured.figures.value.readBytesPerSecond;
      readBytesPerSecond ??= measureReadBandwidth();
    },
    async close() {
      sequences.clear();
      const closing = [...pools.values()];
      heaps = [];
      pools = new Map();
      usedBytes = 0;
      await Promise.all(closing.map((p) => p.close()));
    },
  };
}

/**
 * The advertised profile of a given one: profile_seconds 0 (not measured
 * here) and this node's price and capacity; undefined for "measure" (made
 * in start()) and "off".
 */
function givenProfile(opts: CompiledMemoryNodeOptions): NodeProfile | undefined {
  if (typeof opts.profile !== "object" || opts.profile.figures.case !== "memory") return undefined;
  return {
    ...opts.profile,
    pricePerHour: opts.pricePerHour,
    profileSeconds: 0,
    figures: {
      case: "memory",
      value: { ...opts.profile.figures.value, capacityBytes: BigInt(opts.capacityBytes) },
    },
  };
}

/**
 * Creates a memory-node: its RAM KV store behind the attention-node shell.
 * Nothing is bound until `start()`, which measures the profile first when
 * asked ({@link profileMemoryNode}, the chosen kernel included).
 * @throws ConfigError naming the option when `options` are invalid.
 */
export function createMemoryNode(options: MemoryNodeOptions = {}): MemoryNode {
  const opts = compileMemoryNodeOptions(options);
  const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const service = createAttentionNode({
    role: "memory",
    host: opts.host,
    port: opts.port,
    shutdownGraceMs: opts.shutdownGraceMs,
    capacityBytes: opts.capacityBytes,
    pricePerHour: opts.pricePerHour,
    profile: givenProfile(opts),
    measureProfile: opts.profile === "measure" ? () => profileMemoryNode(opts) : undefined,
    createStore: (node) => createRamKvStore(opts, log, node),
  });
  return Object.assign(service, { options: opts });
}
