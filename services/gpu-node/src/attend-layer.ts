/**
 * The attention half of one layer of a micro-batch on a gpu-node: one
 * AttendRequest per (attention node, KV-head group) with its sequences' rows
 * and its heads' columns of q/k/v, sent over the node's Attend streams, the
 * replies checked, and their o blocks put together into the micro-batch's
 * [rows, n_heads * head_dim] o (HeadInfer's KV-head split: each node answers
 * its heads' columns). A failed call is a {@link StepError} naming the
 * attention node, with its reason.
 */
import { context, trace, type Span } from "@opentelemetry/api";
import { stridedWireTensor, tensorF32, wireTensor, type StridedBlock, type WireDtype } from "@tessera/core";
import { Code, NodeErrorReason, failSpan, type AttendResponse } from "@tessera/proto";
import { AttentionNodeError, type AttendStreams } from "./attend-streams.js";
import type { Qkv } from "./dense-model.js";
import { StepError } from "./step-error.js";
import type { StepClock } from "./step-clock.js";
import type { MicroBatch, PlannedNode } from "./step-plan.js";
import type { Workspace } from "./workspace.js";

/** The model dimensions one layer's attention call needs. */
export interface AttendShape {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
}

/** What one layer's attention of a micro-batch runs with. */
export interface AttendLayerContext {
  stepId: bigint;
  layer: number;
  mb: MicroBatch;
  shape: AttendShape;
  /** Dtype of q/k/v on the wire. */
  dtype: WireDtype;
  /** This micro-batch slot's buffers. */
  ws: Workspace;
  streams: AttendStreams;
  /** Marks the wait for the replies (idle time). */
  clock: StepClock;
  /** Summed max compute_seconds of each layer's replies. */
  timings: { attentionComputeSeconds: number };
  /** The layer's span (recorded), if traced: the requests carry it, it gets the byte counts. */
  span: Span | undefined;
}

/**
 * Runs one layer's attention of a micro-batch: sends the AttendRequests of
 * `qkv` ([rows, q_dim], [rows, kv_dim] x2 f32), waits for every reply and
 * returns o [rows, q_dim] f32 (a view of a reply or of this slot's buffer).
 * Ends the layer's span (failed when the requests cannot be built).
 * @throws StepError naming the first failed attention node (its code and
 *   reason; an unreadable reply is INTERNAL).
 */
export async function attendLayer(c: AttendLayerContext, qkv: Qkv): Promise<Float32Array> {
  const { mb, layer, shape, ws, span } = c;
  const group = shape.nHeads / shape.nKvHeads;
  let requests: ReturnType<typeof buildAttendRequests>;
  try {
    requests = buildAttendRequests(c, qkv);
  } catch (err) {
    // A layer that throws still ends its span.
    failSpan(span, err);
    span?.end();
    throw err;
  }
  c.clock.wait();
  let settled: PromiseSettledResult<AttendResponse>[];
  try {
    // Under the layer span: each AttendRequest carries it to its node.
    const attend = () => Promise.allSettled(mb.nodes.map((node, i) => c.streams.attend(node.address, requests[i]!)));
    settled = await (span ? context.with(trace.setSpan(context.active(), span), attend) : attend());
  } finally {
    c.clock.resume();
  }
  if (span) {
    const bytes = (t: { data?: Uint8Array } | undefined) => t?.data?.byteLength ?? 0;
    span.setAttributes({
      "tessera.attention.nodes": mb.nodes.length,
      "tessera.wire.bytes_sent": requests.reduce((b, r) => b + bytes(r.q) + bytes(r.k) + bytes(r.v), 0),
      "tessera.wire.bytes_received": settled.reduce((b, r) => b + (r.status === "fulfilled" ? bytes(r.value.o) : 0), 0),
    });
    span.end();
  }
  // f16 replies decode into this slot's buffers; f32 ones are views.
  const responses = settled.map((r, i) => {
    const node = mb.nodes[i]!;
    const cols = (node.kvHeadEnd - node.kvHeadStart) * group * shape.headDim;
    return checkAttendResponse(r, node, layer, cols, ws.buf(`o${i}`, node.rows * cols));
  });
  c.timings.attentionComputeSeconds += Math.max(0, ...responses.map((r) => r.response.computeSeconds));
  return assembleO(
    responses.map((r) => r.o),
    mb,
    shape,
    ws,
  );
}

/**
 * One AttendRequest per (node, KV-head group): its sequences' rows and its
 * heads' columns of q/k/v, encoded once straight into wire bytes (f32 rows
 * of a whole, contiguous call are views: no copy).
 */
function buildAttendRequests(c: AttendLayerContext, qkv: Qkv) {
  const { mb, ws, dtype } = c;
  const { nHeads, nKvHeads, headDim } = c.shape;
  const qDim = nHeads * headDim;
  const kvD = nKvHeads * headDim;
  const group = nHeads / nKvHeads;
  return mb.nodes.map((node, i) => {
    const heads = node.kvHeadEnd - node.kvHeadStart;
    const qBlock: StridedBlock = {
      width: qDim,
      rowRanges: node.rowRanges,
      col0: node.kvHeadStart * group * headDim,
      cols: heads * group * headDim,
    };
    const kvBlock: StridedBlock = {
      width: kvD,
      rowRanges: node.rowRanges,
      col0: node.kvHeadStart * headDim,
      cols: heads * headDim,
    };
    const pick = (a: Float32Array, block: StridedBlock, shape: number[], name: string) => {
      const whole = node.contiguous && block.cols === block.width;
      const row0 = node.rowRanges[0]![0];
      const rows = whole ? a.subarray(row0 * block.width, (row0 + node.rows) * block.width) : a;
      if (whole && dtype === "f32") return wireTensor(rows, shape, dtype);
      // Safe to reuse: this slot waits for the reply, so grpc-js has serialised the request by then.
      const bytes = ws.bytes(`${name}${i}`, node.rows * block.cols * (dtype === "f16" ? 2 : 4));
      return whole ? wireTensor(rows, shape, dtype, bytes) : stridedWireTensor(a, block, shape, dtype, bytes);
    };
    return {
      stepId: c.stepId,
      layer: c.layer,
      items: node.items,
      q: pick(qkv.q, qBlock, [node.rows, heads * group, headDim], "q"),
      k: pick(qkv.k, kvBlock, [node.rows, heads, headDim], "k"),
      v: pick(qkv.v, kvBlock, [node.rows, heads, headDim], "v"),
    };
  });
}

/**
 * The micro-batch's o [rows, q_dim] from the o blocks of its calls (in
 * `mb.nodes` order): the one reply itself when a single call carries every
 * row and head, else the blocks scattered into this slot's "o" buffer.
 */
function assembleO(blocks: Float32Array[], mb: MicroBatch, shape: AttendShape, ws: Workspace): Float32Array {
  const { nHeads, nKvHeads, headDim } = shape;
  const qDim = nHeads * headDim;
  const group = nHeads / nKvHeads;
  const only = mb.nodes[0]!;
  if (mb.nodes.length === 1 && only.contiguous && only.kvHeadStart === 0 && only.kvHeadEnd === nKvHeads)
    return blocks[0]!;
  const o = ws.buf("o", mb.rows * qDim);
  blocks.forEach((block, i) => {
    const node = mb.nodes[i]!;
    const cols = (node.kvHeadEnd - node.kvHeadStart) * group * headDim;
    scatterBlock(block, { width: qDim, rowRanges: node.rowRanges, col0: node.kvHeadStart * group * headDim, cols }, o);
  });
  return o;
}

/**
 * The o rows of a settled Attend call as f32 ([node.rows, qDim]: a view of
 * an f32 reply, or an f16 reply decoded into `scratch`), or a StepError
 * naming the node: a stream failure with the AttentionNodeError's code and
 * reason, a per-request error with the node's own code, reason and
 * seq_id (unchanged), an unreadable reply INTERNAL.
 */
export function checkAttendResponse(
  r: PromiseSettledResult<AttendResponse>,
  node: PlannedNode,
  layer: number,
  qDim: number,
  scratch: Float32Array,
): { response: AttendResponse; o: Float32Array } {
  const fail = (code: number, msg: string, reason = NodeErrorReason.INTERNAL, seqId = "") =>
    new StepError(code, msg, "attention", node.address, reason, seqId);
  if (r.status === "rejected") {
    const e = r.reason as unknown;
    if (e instanceof AttentionNodeError) throw fail(e.code, `layer ${layer}: ${e.message}`, e.reason);
    throw fail(Code.INTERNAL, `attention node ${node.address}: layer ${layer}: ${(e as Error).message}`);
  }
  const res = r.value;
  if (res.error) {
    throw fail(
      res.error.code || Code.INTERNAL,
      `attention node ${node.address}: layer ${layer}: ${res.error.message}`,
      res.error.reason,
      res.error.seqId,
    );
  }
  let o: Float32Array;
  try {
    o = tensorF32(res.o, "o", scratch);
  } catch (err) {
    throw fail(Code.INTERNAL, `attention node ${node.address}: layer ${layer}: ${(err as Error).message}`);
  }
  if (o.length !== node.rows * qDim || res.o!.shape[0] !== node.rows) {
    throw fail(
      Code.INTERNAL,
      `attention node ${node.address}: layer ${layer}: o has shape [${res.o!.shape.join(", ")}], expected [${node.rows}, ${qDim}]`,
    );
  }
  return { response: res, o };
}

/**
 * The inverse of picking `block` out of a matrix: the rows of `src` ([rows
 * of the block, block.cols], one after another) go to the block's rows and
 * columns of `dst` (width block.width).
 */
export function scatterBlock(src: Float32Array, block: StridedBlock, dst: Float32Array): void {
  const { width, rowRanges, col0, cols } = block;
  let at = 0;
  for (const [r0, n] of rowRanges) {
    if (cols === width) {
      dst.set(src.subarray(at, at + n * width), r0 * width);
      at += n * width;
      continue;
    }
    for (let r = r0; r < r0 + n; r++, at += cols) dst.set(src.subarray(at, at + cols), r * width + col0);
  }
}
