/**
 * KV layout checks of an attention node's OpenSequence: the layout and
 * max_positions a sequence is opened with, its size, and whether a re-open
 * is idempotent.
 */
import { Code } from "@tessera/proto";
import { kvBytesPerPosition } from "@tessera/core";
import { AttentionRequestError, type AttendTarget } from "./attend-request.js";
import { checkAttentionDims, type KvLayoutDims } from "./dims.js";

/**
 * Validates a wire `KvLayout` and `max_positions` for OpenSequence and
 * returns the bytes of KV cache the sequence needs: max_positions x n_layers
 * x 2 (K, V) x n_kv_heads x head_dim x 4 (f32).
 * @throws AttentionRequestError INVALID_ARGUMENT naming the bad field.
 */
export function kvSequenceBytes(layout: KvLayoutDims | undefined, maxPositions: number, where: string): number {
  if (!layout) throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: layout is missing`);
  if (!Number.isInteger(layout.nLayers) || layout.nLayers < 1) {
    throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: n_layers must be >= 1, got ${layout.nLayers}`);
  }
  try {
    checkAttentionDims(layout);
  } catch (err) {
    throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: ${(err as Error).message}`);
  }
  if (!Number.isInteger(maxPositions) || maxPositions < 1) {
    throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: max_positions must be >= 1, got ${maxPositions}`);
  }
  return maxPositions * kvBytesPerPosition(layout);
}

/** True when two layouts are the same. */
export function sameKvLayout(a: KvLayoutDims, b: KvLayoutDims): boolean {
  return a.nLayers === b.nLayers && a.nHeads === b.nHeads && a.nKvHeads === b.nKvHeads && a.headDim === b.headDim;
}

/** A layout as messages show it: "2 layers, 4 heads, 2 kv heads, head_dim 8". */
export function describeKvLayout(l: KvLayoutDims): string {
  return `${l.nLayers} layers, ${l.nHeads} heads, ${l.nKvHeads} kv heads, head_dim ${l.headDim}`;
}

/**
 * Validates an OpenSequence request on an attention node: the seq_id, the
 * layout and max_positions ({@link kvSequenceBytes}), and, when the node
 * already holds the sequence (`existing`), that re-opening it is
 * idempotent: the same layout and no larger max_positions (its reservation
 * was sized by the first request and does not grow). `where` names the node
 * ("memory-node 127.0.0.1:5"); `held` is how the node holds a sequence, as
 * its messages say: "open" (RAM) or "stored" (disk).
 * @returns the layout (validated) and the bytes of KV cache the sequence needs.
 * @throws AttentionRequestError INVALID_ARGUMENT naming the bad field, or saying how `existing` differs.
 */
export function checkOpenSequence(
  seqId: string,
  layout: KvLayoutDims | undefined,
  maxPositions: number,
  existing: Pick<AttendTarget, "layout" | "maxPositions"> | undefined,
  where: string,
  held: "open" | "stored",
): { layout: KvLayoutDims; bytes: number } {
  if (seqId.length === 0) throw new AttentionRequestError(Code.INVALID_ARGUMENT, `${where}: seq_id is empty`);
  const seq = `${where}: sequence "${seqId}"`;
  const bytes = kvSequenceBytes(layout, maxPositions, seq);
  const lay = layout!;
  if (existing && !sameKvLayout(existing.layout, lay)) {
    throw new AttentionRequestError(
      Code.INVALID_ARGUMENT,
      `${seq} is ${held} with layout (${describeKvLayout(existing.layout)}), not (${describeKvLayout(lay)})`,
    );
  }
  if (existing && maxPositions > existing.maxPositions) {
    throw new AttentionRequestError(
      Code.INVALID_ARGUMENT,
      `${seq} is ${held} with max_positions ${existing.maxPositions}; cannot grow to ${maxPositions}`,
    );
  }
  return { layout: lay, bytes };
}
