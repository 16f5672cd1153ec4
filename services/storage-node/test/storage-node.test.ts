import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import {
  cp,
  mkdir,
  open,
  readFile,
  readdir,
  readlink,
  realpath,
  rm,
  truncate,
  writeFile,
  type FileHandle,
} from "node:fs/promises";
import { setTimeout as delay } from "node:timers/promises";
import { join } from "node:path";
import { attendKvCache } from "@tessera/attention";
import { tensorF32 } from "@tessera/core";
import { crc32 } from "node:zlib";
import {
  Attention,
  Code,
  NodeErrorReason,
  RpcError,
  checkHealth,
  createClient,
  type AttendResponse,
} from "@tessera/proto";
import {
  compileStorageNodeOptions,
  createStorageNode,
  packLoads,
  planChunks,
  sequenceDirName,
  type StorageNodeOptions,
} from "@tessera/storage-node";
import { KvHistory, assertOutput, openAttend, random, type Layout, type Step } from "@tessera/testing";
import { startNode, tempDataDir } from "./helpers.js";

const layout: Layout = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16 };
const rowBytes = layout.nKvHeads * layout.headDim * 4;
/** max_positions x n_layers x 2 x n_kv_heads x head_dim x 4 */
const bytesFor = (maxPositions: number) => maxPositions * layout.nLayers * 2 * rowBytes;

/** Asserts the response equals naive attention (1e-5) and the memory-node's kernel over the same cache (1e-6). */
function checkStep(r: AttendResponse, s: Step, history: KvHistory, what: string): Float32Array {
  const o = assertOutput(r, s.expected, layout, 1e-5, what);
  const q = tensorF32(s.request.q as never);
  const want = new Float32Array(o.length);
  let row = 0;
  for (const it of s.request.items ?? []) {
    const { k, v } = history.kv(it.seqId!, s.request.layer!);
    attendKvCache(layout, { q, qRow: row, nQueries: it.nTokens!, startPos: it.startPos! }, k, v, want, row);
    row += it.nTokens!;
  }
  for (let i = 0; i < o.length; i++) {
    assert.ok(
      Math.abs(o[i]! - want[i]!) <= 1e-6 * Math.max(1, Math.abs(want[i]!)),
      `${what}[${i}]: ${o[i]} vs memory kernel ${want[i]}`,
    );
  }
  return o;
}

for (const [blockPositions, fsync, attentionKernel] of [
  [16, "always", "wasm"],
  [256, "never", "wasm"],
  [5, "never", "wasm"],
  [16, "never", "js"],
] as const) {
  test(`attention streamed through a 16 KiB buffer equals in-memory attention (blockPositions ${blockPositions}, fsync ${fsync}, kernel ${attentionKernel})`, async (t) => {
    const bufferBytes = 16 * 1024;
    const { client, stream } = await startNode(t, {
      dataDir: await tempDataDir(t),
      bufferBytes,
      blockPositions,
      fsync,
      attentionKernel,
    });
    const maxPositions = 420;
    for (const seqId of ["a", "b"]) {
      const r = await client.openSequence({ seqId, layout, maxPositions });
      assert.deepEqual([r.length, r.reservedBytes], [0, BigInt(bytesFor(maxPositions))]);
    }
    const history = new KvHistory(layout, maxPositions, random(blockPositions));
    for (let layer = 0; layer < layout.nLayers; layer++) {
      const s = history.step(layer, [
        { seqId: "a", startPos: 0, nTokens: 150 },
        { seqId: "b", startPos: 0, nTokens: 400 },
      ]);
      checkStep(await stream.attend(s.request), s, history, `prefill layer ${layer}`);
    }
    for (let step = 0; step < 3; step++) {
      for (let layer = 0; layer < layout.nLayers; layer++) {
        const s = history.step(layer, [
          { seqId: "b", startPos: 400 + step, nTokens: 1 },
          { seqId: "a", startPos: 150 + step, nTokens: 1 },
        ]);
        checkStep(await stream.attend(s.request), s, history, `decode ${step} layer ${layer}`);
      }
    }
    // b's cache is 403 positions x 2 layers x 2 x 128 bytes: 6x the buffer.
    assert.ok(403 * 2 * 2 * rowBytes > 6 * bufferBytes);
    assert.equal((await client.openSequence({ seqId: "b", layout, maxPositions })).length, 403);
    assert.equal((await client.openSequence({ seqId: "a", layout, maxPositions })).length, 153);
  });
}

test("a node restarted on its data (as a killed process left it) finds its sequences and continues with identical results", async (t) => {
  const dataDir = await tempDataDir(t);
  const opts = { dataDir, bufferBytes: 4096, blockPositions: 4 };
  const history = new KvHistory(layout, 40, random(9));
  const steps: Step[] = [];
  for (let layer = 0; layer < 2; layer++) steps.push(history.step(layer, [{ seqId: "s", startPos: 0, nTokens: 10 }]));
  for (let layer = 0; layer < 2; layer++) steps.push(history.step(layer, [{ seqId: "s", startPos: 10, nTokens: 1 }]));
  // Position 11: the first node dies after layer 0.
  const cut = history.step(0, [{ seqId: "s", startPos: 11, nTokens: 1 }]);
  const rest = [history.step(1, [{ seqId: "s", startPos: 11, nTokens: 1 }])];
  for (let layer = 0; layer < 2; layer++) rest.push(history.step(layer, [{ seqId: "s", startPos: 12, nTokens: 1 }]));

  const first = createStorageNode({ port: 0, ...opts });
  await first.start();
  t.after(() => first.close());
  const c1 = createClient(Attention, first.address);
  const s1 = openAttend(c1);
  await c1.openSequence({ seqId: "s", layout, maxPositions: 40 });
  const outputs: Float32Array[] = [];
  for (const s of steps) outputs.push(assertOutput(await s1.attend(s.request), s.expected, layout));
  const cutOutput = assertOutput(await s1.attend(cut.request), cut.expected, layout);
  // What a killed process leaves: the files as they are now, without close().
  const crashImage = await tempDataDir(t);
  await cp(dataDir, crashImage, { recursive: true });
  assert.equal(await s1.end(), Code.OK);
  c1.close();
  await first.close();
  // A graceful close records what the unfinished step wrote.
  const manifest = JSON.parse(await readFile(join(dataDir, "seq-s", "manifest.json"), "utf8"));
  assert.deepEqual(manifest.layerLengths, [12, 11]);

  const { client, stream } = await startNode(t, { ...opts, dataDir: crashImage });
  const reopened = await client.openSequence({ seqId: "s", layout, maxPositions: 40 });
  // Step 11 was cut after layer 0: the length is 11 (all layers hold positions 0..10).
  assert.deepEqual([reopened.length, reopened.reservedBytes], [11, BigInt(bytesFor(40))]);
  const info = await client.info({});
  assert.deepEqual([info.role, info.usedBytes, info.sequences], ["storage", BigInt(bytesFor(40)), 1]);
  // The cut step retried: position 11 of layer 0 is overwritten, same output, bit for bit.
  assert.deepEqual(assertOutput(await stream.attend(cut.request), cut.expected, layout), cutOutput);
  const after: Float32Array[] = [];
  for (const s of rest) after.push(assertOutput(await stream.attend(s.request), s.expected, layout));
  assert.equal((await client.openSequence({ seqId: "s", layout, maxPositions: 40 })).length, 13);

  // A node that never restarted gives the same bits for the same requests.
  const { client: c3, stream: s3 } = await startNode(t, { ...opts, dataDir: await tempDataDir(t) });
  await c3.openSequence({ seqId: "s", layout, maxPositions: 40 });
  for (const [i, s] of [...steps, cut, ...rest].entries()) {
    const o = tensorF32((await s3.attend(s.request)).o);
    assert.deepEqual(o, [...outputs, cutOutput, ...after][i], `request ${i}`);
  }
});

// An hour of grace: a drain that waited for the Attend stream to end by
// itself would hang, so the test would fail by its timeout.
test(
  "drain() ends an open Attend stream with OK at once; what it answered is on disk",
  { timeout: 30_000 },
  async (t) => {
    const dataDir = await tempDataDir(t);
    const node = createStorageNode({ port: 0, dataDir, shutdownGraceMs: 3_600_000 });
    await node.start();
    t.after(() => node.close());
    const client = createClient(Attention, node.address);
    t.after(() => client.close());
    await client.openSequence({ seqId: "s", layout, maxPositions: 8 });
    const history = new KvHistory(layout, 8, random(12));
    const call = client.attend();
    const status = new Promise<number>((resolve) => call.on("status", (st: { code: number }) => resolve(st.code)));
    const responses: AttendResponse[] = [];
    let answered: () => void = () => undefined;
    call.on("data", (r: AttendResponse) => {
      responses.push(r);
      answered();
    });
    for (let layer = 0; layer < layout.nLayers; layer++) {
      const st = history.step(layer, [{ seqId: "s", startPos: 0, nTokens: 3 }]);
      const got = new Promise<void>((resolve) => (answered = resolve));
      call.write(st.request);
      await got;
      assertOutput(responses[layer]!, st.expected, layout);
    }
    // The client never half-closes: the node ends the stream itself.
    await node.drain();
    assert.equal(node.state, "draining");
    assert.equal(await status, Code.OK);
    await node.close();
    const { client: c2 } = await startNode(t, { dataDir });
    assert.equal((await c2.openSequence({ seqId: "s", layout, maxPositions: 8 })).length, 3);
  },
);

type FileOp = "write" | "read" | "datasync";
type Interceptor = (op: FileOp, path: string, run: () => Promise<unknown>) => Promise<unknown>;

/**
 * Fault injection: until the test ends, every FileHandle's write, read and
 * datasync in this process goes through `intercept`, which sees the file's
 * path (from /proc/self/fd, so Linux only) and may fail the call, delay it,
 * or `run` it.
 */
async function interceptFileIo(t: TestContext, intercept: Interceptor): Promise<void> {
  const probe = await open(process.execPath, "r");
  const proto = Object.getPrototypeOf(probe) as Record<FileOp, (...args: unknown[]) => Promise<unknown>>;
  await probe.close();
  for (const op of ["write", "read", "datasync"] as const) {
    const original = proto[op];
    proto[op] = async function (this: FileHandle, ...args: unknown[]) {
      const path = await readlink(`/proc/self/fd/${this.fd}`);
      return intercept(op, path, () => original.apply(this, args));
    };
    t.after(() => {
      proto[op] = original;
    });
  }
}

/** An error as the file system gives it, e.g. ENOSPC from write. */
function fsError(code: "ENOSPC" | "EIO", syscall: string): NodeJS.ErrnoException {
  const text = code === "ENOSPC" ? "no space left on device" : "i/o error";
  return Object.assign(new Error(`${code}: ${text}, ${syscall}`), { code, syscall });
}

const linuxOnly = { skip: process.platform !== "linux" && "fault injection reads /proc/self/fd" };

test(
  "I/O errors name the file and keep their meaning: ENOSPC is RESOURCE_EXHAUSTED, EIO DATA_LOSS",
  linuxOnly,
  async (t) => {
    const dataDir = await realpath(await tempDataDir(t));
    const { node, client, stream } = await startNode(t, { dataDir, fsync: "always" });
    const layerFile = (seqId: string, layer: number) => join(dataDir, `seq-${seqId}`, `layer-000${layer}.kv`);
    const faults = new Map<string, NodeJS.ErrnoException>([
      [`write ${layerFile("full", 0)}`, fsError("ENOSPC", "write")],
      [`datasync ${layerFile("bad", 0)}`, fsError("EIO", "fdatasync")],
      [`read ${layerFile("bad", 1)}`, fsError("EIO", "read")],
    ]);
    await interceptFileIo(t, async (op, path, run) => {
      const fault = faults.get(`${op} ${path}`);
      if (fault) throw fault;
      return run();
    });
    const history = new KvHistory(layout, 8, random(13));
    for (const seqId of ["full", "bad"]) await client.openSequence({ seqId, layout, maxPositions: 8 });
    const errorOf = async (layer: number, items: { seqId: string; startPos: number; nTokens: number }[]) => {
      const r = await stream.attend(history.step(layer, items).request);
      return { code: r.error?.code, message: r.error?.message, reason: r.error?.reason, seqId: r.error?.seqId };
    };
    // Each names the node, the sequence (seq_id too) and the file.
    const at = (seqId: string) => `storage-node ${node.address}: sequence "${seqId}"`;
    assert.deepEqual(await errorOf(0, [{ seqId: "full", startPos: 0, nTokens: 2 }]), {
      code: Code.RESOURCE_EXHAUSTED,
      message: `${at("full")}: ${layerFile("full", 0)}: write at byte 0 failed: ENOSPC: no space left on device, write`,
      reason: NodeErrorReason.DISK_FULL,
      seqId: "full",
    });
    assert.deepEqual(await errorOf(0, [{ seqId: "bad", startPos: 0, nTokens: 2 }]), {
      code: Code.DATA_LOSS,
      message: `${at("bad")}: ${layerFile("bad", 0)}: fdatasync failed: EIO: i/o error, fdatasync`,
      reason: NodeErrorReason.KV_LOST,
      seqId: "bad",
    });
    // Layer 1 holds positions 0..1 (written without a fault); attending at 2 reads them.
    const ok = history.step(1, [{ seqId: "bad", startPos: 0, nTokens: 2 }]);
    assertOutput(await stream.attend(ok.request), ok.expected, layout);
    assert.deepEqual(await errorOf(1, [{ seqId: "bad", startPos: 2, nTokens: 1 }]), {
      code: Code.DATA_LOSS,
      message: `${at("bad")}: ${layerFile("bad", 1)}: read at byte 0 failed: EIO: i/o error, read`,
      reason: NodeErrorReason.KV_LOST,
      seqId: "bad",
    });
  },
);

/**
 * One request over sequences "a" and "b": the `op` on a's file of layer 0
 * fails at once, the one on b's is held back. The request must not be
 * answered (after which CloseSequence or close() may close b's files, and
 * the next request reuse the read buffer) before b's I/O is over. The hold
 * ends when the answer comes or after 200 ms, whichever is first; what
 * happened first is recorded.
 */
async function failOneHoldOther(t: TestContext, op: "write" | "read"): Promise<string[]> {
  const dataDir = await realpath(await tempDataDir(t));
  const { client, stream } = await startNode(t, { dataDir, fsync: "never" });
  const history = new KvHistory(layout, 8, random(14));
  for (const seqId of ["a", "b"]) await client.openSequence({ seqId, layout, maxPositions: 8 });
  // Positions 0..2 of layer 0, so that a step at 3 reads them.
  const prefill = history.step(0, [
    { seqId: "a", startPos: 0, nTokens: 3 },
    { seqId: "b", startPos: 0, nTokens: 3 },
  ]);
  assertOutput(await stream.attend(prefill.request), prefill.expected, layout);
  const events: string[] = [];
  let answered!: () => void;
  const answer = new Promise<void>((resolve) => (answered = resolve));
  await interceptFileIo(t, async (o, path, run) => {
    if (o !== op) return run();
    if (path === join(dataDir, "seq-a", "layer-0000.kv")) throw fsError("EIO", op);
    if (path === join(dataDir, "seq-b", "layer-0000.kv")) {
      await Promise.race([answer, delay(200)]);
      const r = await run();
      events.push(`b ${op} done`);
      return r;
    }
    return run();
  });
  const step = history.step(0, [
    { seqId: "a", startPos: 3, nTokens: 1 },
    { seqId: "b", startPos: 3, nTokens: 1 },
  ]);
  const r = await stream.attend(step.request);
  events.push(`answered ${r.error ? RpcError.codeName(r.error.code) : "OK"}`);
  answered();
  // b's held I/O ends before the test (and its node) does.
  while (events.length < 2) await delay(10);
  return events;
}

test(
  "a request whose write fails on one sequence is answered only after its other writes end",
  linuxOnly,
  async (t) => {
    assert.deepEqual(await failOneHoldOther(t, "write"), ["b write done", "answered DATA_LOSS"]);
  },
);

test("a request whose read fails on one sequence is answered only after its other reads end", linuxOnly, async (t) => {
  assert.deepEqual(await failOneHoldOther(t, "read"), ["b read done", "answered DATA_LOSS"]);
});

test("two Attend streams at once share the buffer without mixing their sequences", async (t) => {
  const { client, stream } = await startNode(t, {
    dataDir: await tempDataDir(t),
    bufferBytes: 2048,
    blockPositions: 3,
    fsync: "never",
  });
  const other = openAttend(client);
  t.after(() => other.end());
  const hx = new KvHistory(layout, 30, random(21));
  const hy = new KvHistory(layout, 30, random(22));
  await client.openSequence({ seqId: "x", layout, maxPositions: 30 });
  await client.openSequence({ seqId: "y", layout, maxPositions: 30 });
  const plan: [number, number][] = [[0, 9]];
  for (let p = 9; p < 14; p++) plan.push([p, 1]);
  for (const [startPos, nTokens] of plan) {
    for (let layer = 0; layer < 2; layer++) {
      const sx = hx.step(layer, [{ seqId: "x", startPos, nTokens }]);
      const sy = hy.step(layer, [{ seqId: "y", startPos, nTokens }]);
      const [rx, ry] = await Promise.all([stream.attend(sx.request), other.attend(sy.request)]);
      assertOutput(rx, sx.expected, layout, 1e-5, `x at ${startPos} layer ${layer}`);
      assertOutput(ry, sy.expected, layout, 1e-5, `y at ${startPos} layer ${layer}`);
    }
  }
});

test("files on disk: manifest and block layout as documented", async (t) => {
  const dataDir = await tempDataDir(t);
  const { node, client, stream } = await startNode(t, { dataDir, blockPositions: 4 });
  const seqId = "Prompt/1.x";
  assert.equal(sequenceDirName(seqId), "seq-%50rompt%2f1%2ex");
  await client.openSequence({ seqId, layout, maxPositions: 9 });
  const history = new KvHistory(layout, 9, random(4));
  const dir = join(dataDir, "seq-%50rompt%2f1%2ex");
  const manifest = async () => JSON.parse(await readFile(join(dir, "manifest.json"), "utf8"));
  const s = history.step(0, [{ seqId, startPos: 0, nTokens: 6 }]);
  assertOutput(await stream.attend(s.request), s.expected, layout);
  assert.deepEqual((await readdir(dir)).sort(), ["layer-0000.kv", "layer-0001.kv", "manifest.json"]);
  // The manifest records a step when its last layer is written.
  assert.deepEqual((await manifest()).layerLengths, [0, 0]);
  const s1 = history.step(1, [{ seqId, startPos: 0, nTokens: 6 }]);
  assertOutput(await stream.attend(s1.request), s1.expected, layout);
  assert.deepEqual(await manifest(), {
    format: "tessera-kv",
    version: 1,
    seqId,
    layout,
    maxPositions: 9,
    blockPositions: 4,
    dtype: "f32",
    layerLengths: [6, 6],
    // zlib's CRC-32 of each block's committed positions: [0, 4) and [4, 6).
    blockCrcs: await Promise.all(
      [0, 1].map(async (l) => {
        const f = await readFile(join(dir, `layer-000${l}.kv`));
        return [crc32(f.subarray(0, 4 * 2 * rowBytes)), crc32(f.subarray(4 * 2 * rowBytes, 6 * 2 * rowBytes))];
      }),
    ),
  });
  // Position-major: position p's K row at p x 2 x rowBytes, its V row right after.
  const file = await readFile(join(dir, "layer-0000.kv"));
  const { k, v } = history.kv(seqId, 0);
  const bytes = (a: Float32Array, pos: number) => Buffer.from(a.buffer, a.byteOffset + pos * rowBytes, rowBytes);
  for (let pos = 0; pos < 6; pos++) {
    assert.deepEqual(file.subarray(2 * pos * rowBytes, (2 * pos + 1) * rowBytes), bytes(k, pos), `K row ${pos}`);
    assert.deepEqual(file.subarray((2 * pos + 1) * rowBytes, (2 * pos + 2) * rowBytes), bytes(v, pos), `V row ${pos}`);
  }
  assert.equal(file.length, 6 * 2 * rowBytes);
  await client.closeSequence({ seqId });
  assert.deepEqual(await readdir(dataDir), []);
  assert.equal(node.state, "running");
});

test("damaged files: a clear DATA_LOSS naming the file, for that sequence only", async (t) => {
  const dataDir = await tempDataDir(t);
  const opts = { dataDir, blockPositions: 4 };
  const ids = ["good", "bad-json", "no-manifest", "short"];
  const history = new KvHistory(layout, 8, random(5));
  {
    const first = createStorageNode({ port: 0, ...opts });
    await first.start();
    const c = createClient(Attention, first.address);
    const s = openAttend(c);
    for (const seqId of ids) await c.openSequence({ seqId, layout, maxPositions: 8 });
    for (let layer = 0; layer < 2; layer++) {
      const step = history.step(
        layer,
        ids.map((seqId) => ({ seqId, startPos: 0, nTokens: 4 })),
      );
      assertOutput(await s.attend(step.request), step.expected, layout);
    }
    await s.end();
    c.close();
    await first.close();
  }
  // A create cut short: a directory with empty layer files and no manifest is not a sequence.
  await mkdir(join(dataDir, "seq-half-made"));
  await writeFile(join(dataDir, "seq-half-made", "layer-0000.kv"), "");
  await writeFile(join(dataDir, "seq-bad-json", "manifest.json"), "{oops");
  await rm(join(dataDir, "seq-no-manifest", "manifest.json"));
  await truncate(join(dataDir, "seq-short", "layer-0001.kv"), 100);

  const { node, client, stream } = await startNode(t, opts);
  const refused = async (seqId: string, message: string) =>
    assert.rejects(client.openSequence({ seqId, layout, maxPositions: 8 }), (err: RpcError) => {
      assert.equal(err.code, Code.DATA_LOSS);
      assert.equal(err.message, message);
      return true;
    });
  const prefix = (seqId: string) =>
    `storage-node ${node.address}: sequence "${seqId}" cannot be used: ${join(dataDir, `seq-${seqId}`)}`;
  const jsonError = (() => {
    try {
      JSON.parse("{oops");
    } catch (err) {
      return (err as Error).message;
    }
    return "";
  })();
  await refused(
    "bad-json",
    `${prefix("bad-json")}/manifest.json: corrupt manifest: ${jsonError} (CloseSequence deletes the sequence)`,
  );
  await refused(
    "no-manifest",
    `${prefix("no-manifest")}/manifest.json: manifest is missing (CloseSequence deletes the sequence)`,
  );
  await refused(
    "short",
    `${prefix("short")}/layer-0001.kv: layer file is truncated: 4 committed positions need 1024 bytes, found 100 (CloseSequence deletes the sequence)`,
  );
  assert.deepEqual(await client.info({}).then((i) => [i.sequences, i.usedBytes]), [1, BigInt(bytesFor(8))]);

  // A request naming a damaged sequence fails alone; the stream and the good sequence go on.
  const mixed = history.step(0, [
    { seqId: "good", startPos: 4, nTokens: 1 },
    { seqId: "bad-json", startPos: 4, nTokens: 1 },
  ]);
  const r = await stream.attend(mixed.request);
  assert.equal(r.error?.code, Code.DATA_LOSS);
  assert.equal(r.error?.role, "storage");
  assert.match(r.error!.message, /sequence "bad-json" cannot be used: .*manifest\.json: corrupt manifest/);
  assert.equal((await client.openSequence({ seqId: "good", layout, maxPositions: 8 })).length, 4);
  const good = new KvHistory(layout, 8, random(6));
  // Rebuild good's expected cache: the first 4 rows came from `history`.
  for (let layer = 0; layer < 2; layer++) {
    const src = history.kv("good", layer);
    const dst = good.kv("good", layer);
    dst.k.set(src.k);
    dst.v.set(src.v);
  }
  for (let layer = 0; layer < 2; layer++) {
    const s = good.step(layer, [{ seqId: "good", startPos: 4, nTokens: 1 }]);
    assertOutput(await stream.attend(s.request), s.expected, layout);
  }
  // CloseSequence deletes a damaged sequence; the id can then be opened afresh.
  await client.closeSequence({ seqId: "bad-json" });
  assert.deepEqual((await readdir(dataDir)).sort(), ["seq-good", "seq-no-manifest", "seq-short"]);
  assert.equal((await client.openSequence({ seqId: "half-made", layout, maxPositions: 8 })).length, 0);
  assert.equal((await client.openSequence({ seqId: "bad-json", layout, maxPositions: 8 })).length, 0);
});

test("capacity, unknown sequences, close and health", async (t) => {
  const dataDir = await tempDataDir(t);
  const { node, client, stream } = await startNode(t, {
    dataDir,
    capacityBytes: bytesFor(64) + 10,
    bufferBytes: 1024,
    pricePerHour: 0.02,
    readBytesPerSecond: 1e9,
  });
  assert.equal(await checkHealth(node.address, "tessera.v1.Attention"), "SERVING");
  await client.openSequence({ seqId: "a", layout, maxPositions: 64 });
  await assert.rejects(client.openSequence({ seqId: "b", layout, maxPositions: 1 }), (err: RpcError) => {
    assert.equal(err.code, Code.RESOURCE_EXHAUSTED);
    assert.equal(
      err.message,
      `storage-node ${node.address}: cannot open sequence "b" (max_positions 1, 2 layers, 4 heads, 2 kv heads, head_dim 16): needs ${bytesFor(1)} bytes, 10 available`,
    );
    return true;
  });
  // A 1024-byte buffer has 512-byte halves: too small for 2 x 512 bytes of K and V.
  await assert.rejects(
    client.openSequence({ seqId: "wide", layout: { ...layout, nKvHeads: 4, nHeads: 4, headDim: 32 }, maxPositions: 1 }),
    (err: RpcError) => {
      assert.equal(err.code, Code.FAILED_PRECONDITION);
      assert.match(
        err.message,
        /bufferBytes 1024 cannot stream sequence "wide": each half of it must hold one position's K and V rows, 1024 bytes$/,
      );
      return true;
    },
  );
  await assert.rejects(
    client.openSequence({ seqId: "a", layout: { ...layout, nLayers: 3 }, maxPositions: 64 }),
    (err: RpcError) => {
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      return true;
    },
  );

  const history = new KvHistory(layout, 64, random(8));
  const unknown = new KvHistory(layout, 64, random(9)).step(0, [{ seqId: "zz", startPos: 0, nTokens: 1 }]);
  const r = await stream.attend(unknown.request);
  assert.deepEqual(
    [r.error?.code, r.error?.message, r.error?.address],
    [
      Code.NOT_FOUND,
      `storage-node ${node.address}: layer 0: unknown sequence "zz" (not opened, or closed)`,
      node.address,
    ],
  );
  // 1024-byte buffer, 256-byte positions: 2 positions per read, many reads per step.
  for (const [layer, startPos, nTokens] of [
    [0, 0, 7],
    [1, 0, 7],
    [0, 7, 1],
    [1, 7, 1],
  ] as const) {
    const s = history.step(layer, [{ seqId: "a", startPos, nTokens }]);
    assertOutput(await stream.attend(s.request), s.expected, layout);
  }
  await client.closeSequence({ seqId: "a" });
  await client.closeSequence({ seqId: "never-opened" });
  const info = await client.info({});
  assert.deepEqual(
    [info.usedBytes, info.sequences, info.capacityBytes, info.pricePerHour, info.readBytesPerSecond],
    [0n, 0, BigInt(bytesFor(64) + 10), 0.02, 1e9],
  );
  assert.deepEqual(await readdir(dataDir), []);
  await node.close();
  assert.equal(node.state, "closed");
  assert.equal(await checkHealth(node.address, "tessera.v1.Attention", 500), "UNREACHABLE");
});

test("planChunks and packLoads: whole blocks in file order, every position once, within the half-buffer", () => {
  const pos = 64; // bytes per position
  for (const [ends, bp, halfBytes] of [
    [[0], 4, 1024],
    [[1], 4, 1024],
    [[37], 4, 1024],
    [[37], 4, 200],
    [[37, 0, 5, 100], 5, 4096],
    [[300, 299], 256, 16 * 1024],
    [[300], 256, 8 * 1024],
  ] as const) {
    const chunksPerItem = ends.map((end) => planChunks(end, bp, pos, halfBytes));
    const fit = Math.floor(halfBytes / pos);
    for (const chunks of chunksPerItem) {
      for (const c of chunks) {
        assert.ok(c.nPos * pos <= halfBytes);
        // Whole blocks when a block fits; chunks start on block boundaries then.
        if (fit >= bp) assert.equal(c.firstPos % bp, 0);
      }
    }
    const seen: number[][] = ends.map(() => []);
    for (const load of packLoads(chunksPerItem, halfBytes, pos)) {
      let end = 0;
      for (const c of load.chunks) {
        assert.equal(c.bufOff, end, "chunks are packed back to back");
        end += c.nPos * pos;
        for (let i = 0; i < c.nPos; i++) seen[c.item]!.push(c.firstPos + i);
      }
      assert.ok(end <= halfBytes, `load of ${end} bytes fits ${halfBytes}`);
    }
    assert.deepEqual(
      seen,
      ends.map((end) => Array.from({ length: end }, (_, i) => i)),
      `positions of ${ends} (bp ${bp}, half ${halfBytes})`,
    );
  }
  assert.deepEqual(planChunks(14, 4, 64, 12 * 64 + 10), [
    { firstPos: 0, nPos: 12 },
    { firstPos: 12, nPos: 2 },
  ]);
  assert.deepEqual(planChunks(5, 4, 64, 3 * 64), [
    { firstPos: 0, nPos: 3 },
    { firstPos: 3, nPos: 2 },
  ]);
  assert.throws(() => planChunks(5, 4, 64, 63), /a 63-byte half-buffer cannot hold one position \(64 bytes\)/);
});

test("options are compiled once: defaults, sizes as strings, bad values name the option", () => {
  const o = compileStorageNodeOptions({ dataDir: "rel/dir" });
  assert.deepEqual(
    { ...o, dataDir: undefined },
    {
      dataDir: undefined,
      host: "127.0.0.1",
      port: 0,
      bufferBytes: 64 * 1024 * 1024,
      blockPositions: 256,
      capacityBytes: 64 * 1024 ** 3,
      fsync: "always",
      shutdownGraceMs: 5000,
      attentionKernel: "wasm",
      pricePerHour: 0,
      readBytesPerSecond: 0,
      profile: "off",
    },
  );
  assert.equal(o.dataDir, join(process.cwd(), "rel/dir"));
  assert.equal(compileStorageNodeOptions({ dataDir: "d", pricePerHour: 0.1 }).pricePerHour, 0.1);
  assert.throws(
    () => compileStorageNodeOptions({ dataDir: "d", readBytesPerSecond: -5 }),
    /^ConfigError: readBytesPerSecond: must be a finite number >= 0, got -5/,
  );
  assert.ok(Object.isFrozen(o));
  assert.equal(compileStorageNodeOptions({ dataDir: "d", bufferBytes: "64KiB" }).bufferBytes, 65536);
  assert.throws(
    () => compileStorageNodeOptions({} as StorageNodeOptions),
    /^ConfigError: dataDir: a directory for the KV cache files is required/,
  );
  assert.throws(
    () => compileStorageNodeOptions({ dataDir: "d", attentionKernel: "gpu" as "js" }),
    /^ConfigError: attentionKernel: must be "wasm" or "js"/,
  );
  assert.throws(
    () => compileStorageNodeOptions({ dataDir: "d", fsync: "sometimes" as "always" }),
    /^ConfigError: fsync: must be "always" or "never"/,
  );
  assert.throws(
    () => compileStorageNodeOptions({ dataDir: "d", blockPositions: 0 }),
    /^ConfigError: blockPositions: must be a positive integer/,
  );
  assert.throws(
    () => compileStorageNodeOptions({ dataDir: "d", bufferBytes: 10 }),
    /^ConfigError: bufferBytes: must be at least 1024 bytes/,
  );
});
