// Block checksums of the storage-node's layer files (block-crc.ts): a
// damaged block is found on read and named (node, sequence, file, block),
// for that sequence alone; CRCs survive a restart (in the manifest) and
// follow appends, overwrites (a retried step) and reads split across
// chunks. Real node, real files, real gRPC on loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Code, NodeErrorReason } from "@tessera/proto";
import { sequenceDirName } from "@tessera/storage-node";
import { KvHistory, assertOutput, overwriteAt, random, type Layout } from "@tessera/testing";
import { startNode, tempDataDir } from "./helpers.js";

const layout: Layout = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16 };
/** Bytes of one position (its K row then its V row) in a layer file. */
const positionBytes = 2 * layout.nKvHeads * layout.headDim * 4;

const both = (startPos: number, nTokens: number) => ["a", "b"].map((seqId) => ({ seqId, startPos, nTokens }));

test("a zeroed 4 KB of one sequence's layer file: that sequence's reads fail, named with file and block; the other's are answered", async (t) => {
  const dataDir = await tempDataDir(t);
  const blockPositions = 8;
  const { node, client, stream } = await startNode(t, { dataDir, blockPositions });
  const history = new KvHistory(layout, 64, random(21));
  for (const seqId of ["a", "b"]) await client.openSequence({ seqId, layout, maxPositions: 64 });
  for (const layer of [0, 1]) {
    const s = history.step(layer, both(0, 20));
    assertOutput(await stream.attend(s.request), s.expected, layout);
  }
  const file = join(dataDir, sequenceDirName("a"), "layer-0001.kv");
  // Bytes [4096, 8192): positions 16..31; block 2 holds positions 16..23.
  await overwriteAt(file, 4096, new Uint8Array(4096));
  const r = await stream.attend(history.step(1, both(20, 1)).request);
  const blockBytes = blockPositions * positionBytes;
  assert.deepEqual(
    { code: r.error?.code, reason: r.error?.reason, seqId: r.error?.seqId },
    { code: Code.DATA_LOSS, reason: NodeErrorReason.KV_LOST, seqId: "a" },
  );
  assert.match(
    r.error!.message,
    new RegExp(
      `^storage-node ${node.address}: sequence "a": ${file}: block 2 \\(bytes ${2 * blockBytes}-${3 * blockBytes - 1}\\) fails its checksum: CRC-32 [0-9a-f]{8}, the manifest records [0-9a-f]{8}$`,
    ),
  );
  // b alone (the caller re-sends the rest) is answered and correct.
  const sb = history.step(1, [{ seqId: "b", startPos: 20, nTokens: 1 }]);
  assertOutput(await stream.attend(sb.request), sb.expected, layout);
  // Layer 0 of a is intact.
  const sa = history.step(0, [{ seqId: "a", startPos: 20, nTokens: 1 }]);
  assertOutput(await stream.attend(sa.request), sa.expected, layout);
});

test("CRCs are kept in the manifest: a node restarted on the data directory finds a block damaged while it was down", async (t) => {
  const dataDir = await tempDataDir(t);
  const first = await startNode(t, { dataDir, blockPositions: 4, fsync: "never" });
  const history = new KvHistory(layout, 16, random(22));
  await first.client.openSequence({ seqId: "s", layout, maxPositions: 16 });
  for (const layer of [0, 1]) {
    const s = history.step(layer, [{ seqId: "s", startPos: 0, nTokens: 6 }]);
    assertOutput(await first.stream.attend(s.request), s.expected, layout);
  }
  await first.stream.end();
  await first.node.close();
  // One NaN in position 5's K row (block 1, the partial last block).
  const file = join(dataDir, sequenceDirName("s"), "layer-0000.kv");
  await overwriteAt(file, 5 * positionBytes, new Uint8Array(new Float32Array([NaN]).buffer));
  const second = await startNode(t, { dataDir, blockPositions: 4 });
  assert.equal((await second.client.openSequence({ seqId: "s", layout, maxPositions: 16 })).length, 6);
  const r = await second.stream.attend(history.step(0, [{ seqId: "s", startPos: 6, nTokens: 1 }]).request);
  assert.equal(r.error?.seqId, "s");
  assert.match(r.error!.message, new RegExp(`${file}: block 1 .* fails its checksum`));
  // Layer 1 reads clean.
  const ok = history.step(1, [{ seqId: "s", startPos: 6, nTokens: 1 }]);
  assertOutput(await second.stream.attend(ok.request), ok.expected, layout);
});

test("CRCs follow appends, a retried step's overwrite and reads split across chunks: no false alarm", async (t) => {
  const dataDir = await tempDataDir(t);
  // A half-buffer of 3 positions, blocks of 4: every block is read in two chunks.
  const { stream, client } = await startNode(t, {
    dataDir,
    blockPositions: 4,
    bufferBytes: 2 * 3 * positionBytes,
  });
  const history = new KvHistory(layout, 32, random(23));
  await client.openSequence({ seqId: "x", layout, maxPositions: 32 });
  const run = async (layer: number, startPos: number, nTokens: number) => {
    const s = history.step(layer, [{ seqId: "x", startPos, nTokens }]);
    assertOutput(await stream.attend(s.request), s.expected, layout, 1e-5, `layer ${layer} at ${startPos}`);
  };
  for (const layer of [0, 1]) await run(layer, 0, 5);
  for (let pos = 5; pos < 14; pos++) for (const layer of [0, 1]) await run(layer, pos, 1);
  // A retried step: positions 10..13 written again with other values (overwrite), then appends.
  for (const layer of [0, 1]) await run(layer, 10, 4);
  for (let pos = 14; pos < 19; pos++) for (const layer of [0, 1]) await run(layer, pos, 1);
});

test("a retried step over a damaged block fails, named, instead of recording a CRC of the damage", async (t) => {
  const dataDir = await tempDataDir(t);
  const { stream, client } = await startNode(t, { dataDir, blockPositions: 8 });
  const history = new KvHistory(layout, 32, random(24));
  await client.openSequence({ seqId: "r", layout, maxPositions: 32 });
  for (const layer of [0, 1]) {
    const s = history.step(layer, [{ seqId: "r", startPos: 0, nTokens: 12 }]);
    assertOutput(await stream.attend(s.request), s.expected, layout);
  }
  const file = join(dataDir, sequenceDirName("r"), "layer-0000.kv");
  // Position 9 (block 1, which the retried step at 10 rewrites in part).
  await overwriteAt(file, 9 * positionBytes, new Uint8Array(64));
  for (let i = 0; i < 2; i++) {
    const r = await stream.attend(history.step(0, [{ seqId: "r", startPos: 10, nTokens: 2 }]).request);
    assert.equal(r.error?.seqId, "r", `try ${i}`);
    assert.match(r.error!.message, new RegExp(`${file}: block 1 .* fails its checksum`), `try ${i}`);
  }
});
