/**
 * Shapes of causal GQA attention shared by every kernel and node, and their
 * checks.
 *
 * Conventions (the wire's, see proto/tessera/v1/attention.proto):
 * - a query row is [n_heads, head_dim] f32, a K or V row is
 *   [n_kv_heads, head_dim] f32, an output row is [n_heads * head_dim] f32;
 * - query head h reads KV head floor(h / (n_heads / n_kv_heads)) (GQA;
 *   Ainslie et al. 2023), scores are scaled by 1 / sqrt(head_dim);
 * - the queries of one call are consecutive positions startPos,
 *   startPos + 1, ...; the query at position p attends over positions
 *   [0, p], its own K/V included (causal prefill and decode alike).
 */
/** Head counts and width of an attention layer. */
export interface AttentionDims {
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
}

/** A map key of a layer shape: "n_heads/n_kv_heads/head_dim", e.g. "32/8/128". */
export function attentionDimsKey(dims: AttentionDims): string {
  return `${dims.nHeads}/${dims.nKvHeads}/${dims.headDim}`;
}

/** KV layout of one sequence (the wire's `KvLayout`). */
export interface KvLayoutDims extends AttentionDims {
  readonly nLayers: number;
}

/**
 * Queries of one sequence at consecutive positions: rows `qRow ..
 * qRow + nQueries - 1` of `q` ([rows, n_heads, head_dim] f32), the first
 * at position `startPos`.
 */
export interface CausalQueries {
  readonly q: Float32Array;
  readonly qRow: number;
  readonly nQueries: number;
  readonly startPos: number;
}

/**
 * Checks that head counts are positive integers and n_heads is a multiple of
 * n_kv_heads.
 * @throws RangeError naming the bad field.
 */
export function checkAttentionDims(d: AttentionDims): void {
  for (const [name, v] of [
    ["nHeads", d.nHeads],
    ["nKvHeads", d.nKvHeads],
    ["headDim", d.headDim],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  if (d.nHeads % d.nKvHeads !== 0) {
    throw new RangeError(`nHeads ${d.nHeads} is not a multiple of nKvHeads ${d.nKvHeads}`);
  }
}

/**
 * Checks the dims and the buffers of a contiguous-cache attention call
 * (every kernel's `AttentionKernel.attendKvCache` (kernels/registry.ts) runs it first):
 * K/V hold positions [0, startPos + nQueries), q and out the rows asked.
 * @throws RangeError when the dims are bad or a buffer is too short.
 */
export function checkKvCacheCall(
  dims: AttentionDims,
  queries: CausalQueries,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  outRow: number,
): void {
  checkAttentionDims(dims);
  const { nHeads, nKvHeads, headDim } = dims;
  const { q, qRow, nQueries, startPos } = queries;
  const kvRow = nKvHeads * headDim;
  const qStride = nHeads * headDim;
  const end = startPos + nQueries;
  if (k.length < end * kvRow || v.length < end * kvRow) {
    throw new RangeError(`K/V buffers hold ${Math.floor(Math.min(k.length, v.length) / kvRow)} positions, need ${end}`);
  }
  if (q.length < (qRow + nQueries) * qStride)
    throw new RangeError(`q has too few rows for ${nQueries} queries at row ${qRow}`);
  if (out.length < (outRow + nQueries) * qStride)
    throw new RangeError(`out has too few rows for ${nQueries} queries at row ${outRow}`);
}
