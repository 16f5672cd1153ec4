/**
 * Attend requests: the validation both attention nodes share
 * ({@link planAttendRequest}), the answer with its timing and its error
 * ({@link answerAttend}), and the {@link NodeErrorReason} of a failure.
 */
import {
  Code,
  DType,
  NodeErrorReason,
  RpcError,
  type AttendRequest,
  type AttendResponseSchema,
  type MessageInitShape,
  type TensorSchema,
} from "@tessera/proto";
import {
  CapacityError,
  QK_MAX_ABS,
  TesseraError,
  checkFiniteValues,
  tensorF32,
  tensorWireDtype,
  wireTensor,
} from "@tessera/core";
import { checkAttentionDims, type AttentionDims, type KvLayoutDims } from "./dims.js";

/**
 * An `AttendRequest` (or one of its items) is malformed or does not fit the
 * sequence it names. `rpcCode` is NOT_FOUND for an unknown sequence,
 * OUT_OF_RANGE for bad positions, INVALID_ARGUMENT for bad shapes; `reason`
 * is KV_LOST when the sequence is unknown or holds fewer positions than the
 * request needs, else INVALID_REQUEST. Nodes report it in
 * `AttendResponse.error`, so the stream survives.
 */
export class AttentionRequestError extends TesseraError {
  override name = "AttentionRequestError";
  /**
   * @param reason what the caller should do about it ({@link NodeErrorReason}).
   *   @default KV_LOST for NOT_FOUND (an unknown sequence), else INVALID_REQUEST
   */
  constructor(
    code: number,
    message: string,
    readonly reason: NodeErrorReason = code === Code.NOT_FOUND
      ? NodeErrorReason.KV_LOST
      : NodeErrorReason.INVALID_REQUEST,
  ) {
    super(message);
    this.rpcCode = code;
  }
}

/**
 * A failure of one sequence's own KV cache on an attention node: its files
 * damaged or gone, a block whose checksum does not match, its disk full.
 * The Attend response names the sequence (`NodeError.seq_id`, the id the
 * node knows it by) with `reason` (KV_LOST, or DISK_FULL), so the caller
 * rebuilds that sequence alone and re-sends the others of the request.
 * `rpcCode` is the code of the underlying failure (DATA_LOSS,
 * RESOURCE_EXHAUSTED, ...).
 */
export class SequenceKvError extends TesseraError {
  override name = "SequenceKvError";
  constructor(
    /** The sequence at fault. */
    readonly seqId: string,
    /** What the caller should do about it. */
    readonly reason: NodeErrorReason,
    message: string,
    options: { code: number; cause?: unknown },
  ) {
    super(message, { cause: options.cause });
    this.rpcCode = options.code;
  }
}

/** A sequence as the Attend validation sees it. */
export interface AttendTarget {
  readonly layout: KvLayoutDims;
  readonly maxPositions: number;
  /** Positions written so far for `layer`. */
  layerLength(layer: number): number;
}

/** One validated item: its sequence and its rows in q, k, v and o. */
export interface AttendPlanItem<S> {
  readonly seqId: string;
  readonly seq: S;
  readonly startPos: number;
  readonly nTokens: number;
  /** First row of this item in q, k, v and the output. */
  readonly row: number;
}

/**
 * A validated request: its tensors as f32 (views of f32 wire bytes, or
 * decoded from f16) and its items.
 */
export interface AttendPlan<S> {
  readonly layer: number;
  readonly dims: AttentionDims;
  readonly totalTokens: number;
  /** [total_tokens, n_heads, head_dim] */
  readonly q: Float32Array;
  /** [total_tokens, n_kv_heads, head_dim] */
  readonly k: Float32Array;
  /** [total_tokens, n_kv_heads, head_dim] */
  readonly v: Float32Array;
  readonly items: readonly AttendPlanItem<S>[];
}

/**
 * Answers one AttendRequest of a memory- or storage-node: runs `compute`
 * (which appends and attends, returning o [total_tokens, n_heads * head_dim]
 * f32 as a wire tensor) and times it. When `compute` is synchronous and q is
 * f16, its `o` is encoded before this returns (no await in between), so it
 * may view a buffer the node reuses. `o` goes back in the dtype of the
 * request's q: an f32 `o` is encoded to f16 in one pass when q was f16, so
 * a gpu-node that sends f16 activations gets f16 back. Anything `compute`
 * throws becomes the response's `error` (code from `RpcError.from`, reason
 * from {@link attendErrorReason}, the node's role and address, and the
 * sequence of a {@link SequenceKvError} as `seq_id`), so one bad request
 * never ends the Attend stream.
 */
export async function answerAttend(
  req: AttendRequest,
  node: { role: string; address: string },
  compute: () => MessageInitShape<typeof TensorSchema> | Promise<MessageInitShape<typeof TensorSchema>>,
): Promise<MessageInitShape<typeof AttendResponseSchema>> {
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  try {
    // A synchronous compute's output is encoded below in the same tick, so
    // (for an f16 request) it may be a view of a buffer the node reuses for
    // its next request: only the fresh f16 bytes outlive this call.
    const r = compute();
    let o = r instanceof Promise ? await r : r;
    // f16: one encoding pass from the node's f32 output into fresh wire
    // bytes. Having compute write f16 directly would not save a pass or an
    // allocation: the kernels accumulate in f32/f64 and need an f32 output
    // to write to, and the f16 bytes must be allocated either way.
    if (tensorWireDtype(req.q) === "f16" && o.dtype === DType.DTYPE_F32 && o.data) {
      const b = o.data;
      const n = b.byteLength / 4;
      const f =
        b.byteOffset % 4 === 0
          ? new Float32Array(b.buffer, b.byteOffset, n)
          : new Float32Array(new Uint8Array(b).buffer);
      o = wireTensor(f, o.shape ?? [n], "f16");
    }
    return { stepId: req.stepId, layer: req.layer, o, computeSeconds: seconds() };
  } catch (err) {
    const e = RpcError.from(err);
    const reason = attendErrorReason(err);
    const seqId = err instanceof SequenceKvError ? err.seqId : "";
    const error = { code: e.code, message: e.message, role: node.role, address: node.address, reason, seqId };
    return { stepId: req.stepId, layer: req.layer, error, computeSeconds: seconds() };
  }
}

/**
 * Validates `req` before anything is written, so a bad request has no
 * effect: every item names a known sequence (once), `layer` exists in its
 * layout, the tensors are f32 or f16 (each on its own; f16 is decoded to
 * fresh f32 arrays or `scratch`) of the shapes the proto gives and match each
 * sequence's layout, n_tokens >= 1, start_pos <= the layer's current length
 * (equal appends; less overwrites, which makes a retried step idempotent)
 * and start_pos + n_tokens <= max_positions. Last, q and k must hold no
 * value that would make the attention scores NaN or overflow (NaN, ±inf,
 * beyond {@link QK_MAX_ABS}): the kernels would fail with INTERNAL, but such
 * values are the client's bad input.
 * @param lookup finds a sequence by id, undefined when unknown; it may throw
 *   its own error (e.g. a sequence whose files are damaged).
 * @param where names the node in messages, e.g. `memory-node 127.0.0.1:7001`.
 * @param scratch where f16 q, k and v ([n] f32 each, at least n long) are
 *   decoded instead of fresh arrays: a node that consumes them before its
 *   next request reuses them (less garbage per layer: see memory-node.ts).
 * @throws AttentionRequestError (see its codes), or what `lookup` throws.
 */
export function planAttendRequest<S extends AttendTarget>(
  req: AttendRequest,
  lookup: (seqId: string) => S | undefined,
  where: string,
  scratch?: (what: "q" | "k" | "v", n: number) => Float32Array,
): AttendPlan<S> {
  const bad = (code: number, msg: string, reason?: NodeErrorReason) =>
    new AttentionRequestError(code, `${where}: layer ${req.layer}: ${msg}`, reason);
  const shapeOf = (t: AttendRequest["q"]) => (t ? `[${t.shape.join(", ")}]` : "missing");
  const q3 = req.q?.shape;
  const k3 = req.k?.shape;
  const v3 = req.v?.shape;
  if (!q3 || !k3 || !v3 || q3.length !== 3 || k3.length !== 3 || v3.length !== 3) {
    throw bad(
      Code.INVALID_ARGUMENT,
      `q, k and v must be rank-3 tensors, got q ${shapeOf(req.q)}, k ${shapeOf(req.k)}, v ${shapeOf(req.v)}`,
    );
  }
  const [tq, nHeads, headDim] = q3 as [number, number, number];
  const [tk, nKvHeads, kDim] = k3 as [number, number, number];
  if (tk !== tq || kDim !== headDim || v3[0] !== tk || v3[1] !== nKvHeads || v3[2] !== kDim) {
    throw bad(
      Code.INVALID_ARGUMENT,
      `shapes do not agree: q ${shapeOf(req.q)} must be [T, n_heads, head_dim], k ${shapeOf(req.k)} and v ${shapeOf(req.v)} [T, n_kv_heads, head_dim]`,
    );
  }
  let q: Float32Array, k: Float32Array, v: Float32Array;
  try {
    // Head counts of 0 (or n_heads not a multiple of n_kv_heads) are the caller's error, not the kernel's.
    checkAttentionDims({ nHeads, nKvHeads, headDim });
    const n = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
    q = tensorF32(req.q, "q", scratch?.("q", n(q3)));
    k = tensorF32(req.k, "k", scratch?.("k", n(k3)));
    v = tensorF32(req.v, "v", scratch?.("v", n(v3)));
  } catch (err) {
    throw bad(Code.INVALID_ARGUMENT, (err as Error).message);
  }
  const items: AttendPlanItem<S>[] = [];
  const seen = new Set<string>();
  let row = 0;
  for (const it of req.items) {
    const id = it.seqId;
    if (seen.has(id)) throw bad(Code.INVALID_ARGUMENT, `sequence "${id}" appears twice in one request`);
    seen.add(id);
    const seq = lookup(id);
    if (!seq) throw bad(Code.NOT_FOUND, `unknown sequence "${id}" (not opened, or closed)`);
    const L = seq.layout;
    if (L.nHeads !== nHeads || L.nKvHeads !== nKvHeads || L.headDim !== headDim) {
      throw bad(
        Code.INVALID_ARGUMENT,
        `sequence "${id}" has n_heads ${L.nHeads}, n_kv_heads ${L.nKvHeads}, head_dim ${L.headDim}; q is ${shapeOf(req.q)}, k ${shapeOf(req.k)}`,
      );
    }
    if (req.layer >= L.nLayers) throw bad(Code.INVALID_ARGUMENT, `sequence "${id}" has ${L.nLayers} layers`);
    if (it.nTokens < 1) throw bad(Code.INVALID_ARGUMENT, `sequence "${id}": n_tokens must be >= 1`);
    const len = seq.layerLength(req.layer);
    if (it.startPos > len) {
      throw bad(
        Code.OUT_OF_RANGE,
        `sequence "${id}": start_pos ${it.startPos} leaves a gap after its ${len} stored positions`,
        NodeErrorReason.KV_LOST,
      );
    }
    if (it.startPos + it.nTokens > seq.maxPositions) {
      throw bad(
        Code.OUT_OF_RANGE,
        `sequence "${id}": positions [${it.startPos}, ${it.startPos + it.nTokens}) exceed its max_positions ${seq.maxPositions}`,
        NodeErrorReason.INVALID_REQUEST,
      );
    }
    items.push({ seqId: id, seq, startPos: it.startPos, nTokens: it.nTokens, row });
    row += it.nTokens;
  }
  if (row !== tq) throw bad(Code.INVALID_ARGUMENT, `items have ${row} tokens in all, tensors have ${tq} rows`);
  try {
    checkFiniteValues(q, "q", QK_MAX_ABS);
    checkFiniteValues(k, "k", QK_MAX_ABS);
  } catch (err) {
    throw bad(Code.INVALID_ARGUMENT, (err as Error).message);
  }
  return { layer: req.layer, dims: { nHeads, nKvHeads, headDim }, totalTokens: tq, q, k, v, items };
}

/**
 * The {@link NodeErrorReason} of an Attend failure, by error class and gRPC
 * code (never by message text): an {@link AttentionRequestError}'s or a
 * {@link SequenceKvError}'s own reason; CAPACITY for a {@link CapacityError} or RESOURCE_EXHAUSTED (a full
 * disk); KV_LOST for NOT_FOUND and DATA_LOSS (a sequence whose KV cache is
 * gone or damaged); INVALID_REQUEST for INVALID_ARGUMENT, OUT_OF_RANGE and
 * FAILED_PRECONDITION; INTERNAL for anything else.
 */
export function attendErrorReason(err: unknown): NodeErrorReason {
  if (err instanceof AttentionRequestError || err instanceof SequenceKvError) return err.reason;
  if (err instanceof CapacityError) return NodeErrorReason.CAPACITY;
  switch (RpcError.from(err).code) {
    case Code.RESOURCE_EXHAUSTED:
      return NodeErrorReason.CAPACITY;
    case Code.NOT_FOUND:
    case Code.DATA_LOSS:
      return NodeErrorReason.KV_LOST;
    case Code.INVALID_ARGUMENT:
    case Code.OUT_OF_RANGE:
    case Code.FAILED_PRECONDITION:
      return NodeErrorReason.INVALID_REQUEST;
    default:
      return NodeErrorReason.INTERNAL;
  }
}
