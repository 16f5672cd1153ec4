/**
 * Block checksums of a storage-node's layer files (see kv-store.ts for the
 * layout): per layer, one CRC-32 per block of `blockPositions` positions,
 * over the block's committed positions (a partial last block: over the
 * positions it holds so far). CRC-32 (the ISO-HDLC polynomial of gzip, PNG
 * and `node:zlib` crc32), computed by @node-rs/crc32 (SIMD; 2-3x zlib's on
 * the machine we measured, see `npm run bench`, attention), which continues
 * a running value, so an append extends the last block's CRC without
 * reading it back.
 *
 * The node keeps them in memory and records them in the manifest with the
 * lengths, so the two always agree (both are replaced in the same atomic
 * write). Reads check every block they cover as it streams through the
 * read buffer; a block that does not match is a {@link KvStoreError}
 * naming the file and the block. A block whose CRC is not
 * known ({@link UNKNOWN_CRC}: a manifest written before checksums, or a
 * partial block that a retried step is overwriting) is read unchecked.
 */
import { crc32 as nativeCrc32 } from "@node-rs/crc32";

/** CRC-32 of `bytes` continuing `prev` (0 starts one); a view, no copy. */
function crc32(bytes: Uint8Array, prev: number): number {
  return nativeCrc32(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), prev);
}

/** A block whose CRC is not known: read unchecked. */
export const UNKNOWN_CRC = -1;

/** A block that failed its check: its index, the CRC recorded and the CRC read. */
export interface BadBlock {
  block: number;
  expected: number;
  found: number;
}

/**
 * Updates `crcs` (one per block of one layer) after `rows` (whole positions
 * of `positionBytes`) were written at positions [start, ...), where `start`
 * was the layer's committed length: each block's CRC is continued (a block
 * that starts at a written position starts afresh).
 */
export function appendCrcs(
  crcs: number[],
  blockPositions: number,
  positionBytes: number,
  start: number,
  rows: Uint8Array,
): void {
  const end = start + rows.byteLength / positionBytes;
  for (let p = start; p < end;) {
    const b = Math.floor(p / blockPositions);
    const stop = Math.min((b + 1) * blockPositions, end);
    const prev = p % blockPositions === 0 ? 0 : (crcs[b] ?? UNKNOWN_CRC);
    const seg = rows.subarray((p - start) * positionBytes, (stop - start) * positionBytes);
    crcs[b] = prev === UNKNOWN_CRC ? UNKNOWN_CRC : crc32(seg, prev);
    p = stop;
  }
}

/** CRC-32 of a whole run of bytes (one block's positions), as {@link appendCrcs} computes it. */
export function blockCrc(bytes: Uint8Array): number {
  return crc32(bytes, 0);
}

/**
 * The CRCs a read of positions [0, end) of a layer checks against, taken
 * when the request is planned (the request's own writes then change the
 * last block's): the full blocks' CRCs, and the partial last block's when
 * `end` is the layer's committed length (else unknown: its CRC covers
 * positions the read does not).
 */
export function expectedCrcs(crcs: readonly number[], blockPositions: number, end: number, length: number): number[] {
  const n = Math.ceil(end / blockPositions);
  const out = crcs.slice(0, n);
  while (out.length < n) out.push(UNKNOWN_CRC);
  if (end % blockPositions !== 0 && end !== length && n > 0) out[n - 1] = UNKNOWN_CRC;
  return out;
}

/**
 * A check of positions [0, end) of one layer file read in order, in runs:
 * `feed(firstPos, bytes)` takes the next run (whole positions, starting
 * where the last one ended) and returns the first block that ended in it
 * and does not match `expected`, or undefined.
 */
export function createBlockCheck(
  expected: readonly number[],
  blockPositions: number,
  positionBytes: number,
  end: number,
): (firstPos: number, bytes: Uint8Array) => BadBlock | undefined {
  let running = 0;
  return (firstPos, bytes) => {
    const last = firstPos + bytes.byteLength / positionBytes;
    for (let p = firstPos; p < last;) {
      const b = Math.floor(p / blockPositions);
      const stop = Math.min((b + 1) * blockPositions, last);
      const want = expected[b] ?? UNKNOWN_CRC;
      if (want !== UNKNOWN_CRC) {
        const seg = bytes.subarray((p - firstPos) * positionBytes, (stop - firstPos) * positionBytes);
        running = crc32(seg, p % blockPositions === 0 ? 0 : running);
        const blockEnd = Math.min((b + 1) * blockPositions, end);
        if (stop === blockEnd && running !== want) return { block: b, expected: want, found: running };
      }
      p = stop;
    }
    return undefined;
  };
}
