/**
 * The memory-node: the `tessera.v1.Attention` service with each sequence's
 * KV cache in RAM. Per sequence and layer it holds one K and one V buffer,
 * [max_positions, n_kv_heads, head_dim] f32 each, allocated (and counted
 * against `capacityBytes`) in full at OpenSequence, so a sequence that was
 * admitted never runs the node out of memory later. Attention runs on the
 * event-loop thread with {@link attendKvCache} (core).
 *
 * Length of a sequence = the minimum over its layers of the positions
 * written. Layers are written one Attend request at a time, so in the middle
 * of a step the first layers are one position ahead; the minimum is the
 * number of positions every layer holds, the one a caller can resume from.
 */
import {
  answerAttend,
  CapacityError,
  ConfigError,
  attendKvCache,
  checkOpenSequence,
  createAttentionScratch,
  createGrpcService,
  createRequestLoops,
  describeKvLayout,
  f32Tensor,
  parseByteSize,
  planAttendRequest,
  type AttendTarget,
  type KvLayoutDims,
  type Service,
} from "@tessera/core";
import {
  Attention,
  addService,
  type AttendRequest,
  type AttendResponseSchema,
  type MessageInitShape,
  type ServiceImpl,
} from "@tessera/proto";

/** gRPC service name the health service reports on. */
export const ATTENTION_SERVICE_NAME = "tessera.v1.Attention";

/** Options of a memory-node as a user gives them; see {@link compileMemoryNodeOptions}. */
export interface MemoryNodeOptions {
  /** Address to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number | string;
  /** KV cache bytes this node may hold, as bytes or a size ("512MiB"). @default 1 GiB */
  capacityBytes?: number | string;
  /** How long drain() lets open calls (Attend streams) finish before forcing, in ms. @default 5000 */
  drainGraceMs?: number;
}

/** Validated, defaulted, frozen memory-node options (sizes in bytes, times in ms). */
export interface CompiledMemoryNodeOptions {
  readonly host: string;
  readonly port: number;
  readonly capacityBytes: number;
  readonly drainGraceMs: number;
}

/**
 * Applies defaults and validates once (Temporal's `compileWorkerOptions`
 * pattern).
 * @throws ConfigError naming the option when a value is invalid.
 */
export function compileMemoryNodeOptions(options: MemoryNodeOptions = {}): CompiledMemoryNodeOptions {
  const host = options.host ?? "127.0.0.1";
  if (typeof host !== "string" || host.length === 0)
    throw new ConfigError("host", `must be a host name or address, got ${String(host)}`);
  return Object.freeze({
    host,
    port: compilePort(options.port),
    capacityBytes: parseByteSize("capacityBytes", options.capacityBytes ?? 1024 ** 3),
    drainGraceMs: nonNegativeInt("drainGraceMs", options.drainGraceMs, 5000),
  });
}

function compilePort(port: number | string | undefined): number {
  const n = typeof port === "string" ? Number(port) : (port ?? 0);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new ConfigError("port", `must be an integer 0..65535, got ${String(port)}`);
  return n;
}

function nonNegativeInt(name: string, v: number | undefined, dflt: number): number {
  const n = v ?? dflt;
  if (!Number.isInteger(n) || n < 0) throw new ConfigError(name, `must be a non-negative integer, got ${String(v)}`);
  return n;
}

/** A running (or not yet started) memory-node. */
export interface MemoryNode extends Service {
  readonly role: "memory";
  readonly options: CompiledMemoryNodeOptions;
}

/** One sequence's KV cache. */
interface Sequence extends AttendTarget {
  readonly id: string;
  readonly layout: KvLayoutDims;
  readonly maxPositions: number;
  readonly reservedBytes: number;
  /** Per layer, [max_positions, n_kv_heads, head_dim] f32. */
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  /** Positions written, per layer. */
  readonly lengths: Uint32Array;
}

function sequenceLength(seq: Sequence): number {
  return seq.lengths.reduce((a, b) => Math.min(a, b), Number.MAX_SAFE_INTEGER);
}

/**
 * Creates a memory-node. Nothing is bound until `start()`.
 * @throws ConfigError naming the option when `options` are invalid.
 */
export function createMemoryNode(options: MemoryNodeOptions = {}): MemoryNode {
  const opts = compileMemoryNodeOptions(options);
  const sequences = new Map<string, Sequence>();
  const scratch = createAttentionScratch();
  const attendLoops = createRequestLoops();
  let usedBytes = 0;

  const address = () => service.address;
  const where = () => `memory-node ${address()}`;

  function openSequence(seqId: string, layout: KvLayoutDims | undefined, maxPositions: number) {
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
    const k: Float32Array[] = [];
    const v: Float32Array[] = [];
    try {
      for (let l = 0; l < lay.nLayers; l++) {
        k.push(new Float32Array(rowFloats));
        v.push(new Float32Array(rowFloats));
      }
    } catch (err) {
      // The capacity option promised more than the process can allocate.
      throw new CapacityError(
        `${where()}: cannot allocate sequence "${seqId}": ${(err as Error).message}`,
        bytes,
        available,
      );
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
      k,
      v,
      lengths,
      layerLength: (layer) => lengths[layer] ?? 0,
    });
    usedBytes += bytes;
    return { length: 0, reservedBytes: BigInt(bytes) };
  }

  function closeSequence(seqId: string): void {
    const seq = sequences.get(seqId);
    if (!seq) return;
    sequences.delete(seqId);
    usedBytes -= seq.reservedBytes;
  }

  /**
   * Appends then attends, synchronously: a request is applied whole or, when
   * validation fails, not at all.
   */
  function attend(req: AttendRequest): Promise<MessageInitShape<typeof AttendResponseSchema>> {
    return answerAttend(req, { role: "memory", address: address() }, () => {
      const plan = planAttendRequest(req, (id) => sequences.get(id), where());
      const { dims, layer } = plan;
      const kvRow = dims.nKvHeads * dims.headDim;
      const oRow = dims.nHeads * dims.headDim;
      const out = new Float32Array(plan.totalTokens * oRow);
      for (const it of plan.items) {
        const kc = it.seq.k[layer]!;
        const vc = it.seq.v[layer]!;
        // Write first: each query attends over its own K/V too. Rows at
        // positions < the current length are overwritten (a retried step).
        kc.set(plan.k.subarray(it.row * kvRow, (it.row + it.nTokens) * kvRow), it.startPos * kvRow);
        vc.set(plan.v.subarray(it.row * kvRow, (it.row + it.nTokens) * kvRow), it.startPos * kvRow);
        const lengths = it.seq.lengths;
        lengths[layer] = Math.max(lengths[layer]!, it.startPos + it.nTokens);
        attendKvCache(
          dims,
          { q: plan.q, qRow: it.row, nQueries: it.nTokens, startPos: it.startPos },
          kc,
          vc,
          out,
          it.row,
          scratch,
        );
      }
      return f32Tensor(out, [plan.totalTokens, oRow]);
    });
  }

  const impl: ServiceImpl<typeof Attention> = {
    /** Reserves and allocates; RESOURCE_EXHAUSTED past capacity, INVALID_ARGUMENT for another layout. */
    async openSequence(req) {
      return openSequence(req.seqId, req.layout, req.maxPositions);
    },
    /** Frees the buffers at once; unknown ids succeed. */
    async closeSequence(req) {
      closeSequence(req.seqId);
      return {};
    },
    /**
     * One response per request, in order; a bad request gets an `error`
     * response and the stream goes on. A drain ends the stream with OK
     * (the client retries elsewhere or later); requests it had not read yet
     * are not answered.
     */
    attend(call) {
      return attendLoops.serve(call, attend);
    },
    /** Capacity and reserved bytes (sum of open sequences' reservations). */
    async info() {
      return {
        role: "memory",
        capacityBytes: BigInt(opts.capacityBytes),
        usedBytes: BigInt(usedBytes),
        sequences: sequences.size,
      };
    },
  };

  const service = createGrpcService({
    role: "memory",
    name: "memory-node",
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
    onClose() {
      sequences.clear();
      usedBytes = 0;
    },
  });
  return Object.assign(service, { options: opts });
}
