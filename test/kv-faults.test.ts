/**
 * Issue 13, "integrity and isolation of failures": a fault in one
 * sequence's KV cache on a storage-node (4 KB zeroed, a NaN written, its
 * directory deleted, its manifest deleted or damaged, its disk full) is
 * that sequence's alone. It is named (node, sequence, file), rebuilt from
 * its tokens, and every prompt of the job still gets the tokens of an
 * undisturbed run; the other sequences are not moved.
 *
 * Real parts: in-process gpu-node, storage-nodes and coordinator on
 * loopback ports, real files (a real 2 MiB tmpfs for the full disk).
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { open, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { KvPlacement } from "@tessera/proto";
import { parsePromptsJsonl } from "@tessera/core";
import { createGpuNode } from "@tessera/gpu-node";
import { createStorageNode, type StorageNode } from "@tessera/storage-node";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate, overwriteAt, tempDir, tmpfsDir, type GenerateOutcome } from "@tessera/testing";

const MAX_TOKENS = 40;

async function storagePrompts() {
  const all = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"));
  return all.slice(0, 8).map((p) => ({ id: p.id, prompt: p.prompt, kv: KvPlacement.STORAGE }));
}

/** A gpu-node, the given storage-nodes and a coordinator whose log lines are kept. */
async function startCluster(t: TestContext, storage: StorageNode[], retryTimeoutMs = 600_000) {
  const gpu = createGpuNode({ port: 0, wireDtype: "f32" });
  await Promise.all([gpu, ...storage].map((n) => n.start()));
  const log: string[] = [];
  const coordinator = createCoordinator({
    gpuNodes: [gpu.address],
    memoryNodes: [],
    storageNodes: storage.map((s) => s.address),
    modelPath: bundled.model,
    tokenizerPath: bundled.tokenizer,
    connectTimeoutMs: 1000,
    // Long: a sequence that waited it out instead of moving at once would
    // make the test time out.
    retryTimeoutMs,
    log: (line: string) => log.push(line),
  });
  await coordinator.start();
  t.after(async () => {
    await coordinator.close();
    await Promise.all([gpu, ...storage].map((n) => n.close()));
  });
  return { coordinator, log };
}

/** The sequence directories under `dataDir`, with the prompt index their seq-id ends in. */
async function sequenceDirs(dataDir: string): Promise<{ dir: string; index: number }[]> {
  const out: { dir: string; index: number }[] = [];
  for (const name of (await readdir(dataDir)).filter((n) => n.startsWith("seq-")).sort()) {
    const dir = join(dataDir, name);
    const m = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")) as { seqId: string };
    out.push({ dir, index: Number(/-(\d+)$/.exec(m.seqId)![1]) });
  }
  return out;
}

/** Fills the rest of the file system under `dir` (appends to dir/filler.bin until ENOSPC). */
async function fillDisk(dir: string): Promise<void> {
  const fh = await open(join(dir, "filler.bin"), "a");
  try {
    for (;;) await fh.write(new Uint8Array(64 * 1024));
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, "ENOSPC");
  } finally {
    await fh.close();
  }
}

/** Every prompt finished without error, with the tokens of `reference`. */
function assertSameTokens(out: GenerateOutcome, reference: GenerateOutcome, ids: readonly string[]) {
  for (const id of ids) {
    const r = out.results.get(id)!;
    assert.equal(r.error, "", `${id}: ${r.error}`);
    assert.deepEqual(r.completionTokenIds, reference.results.get(id)!.completionTokenIds, id);
  }
}

const rebuilt = (log: readonly string[]) => log.filter((l) => l.includes("rebuilding prompt"));

test("zeroed 4 KB, a NaN and a deleted directory: only those sequences are rebuilt, named; every prompt keeps its tokens", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const storage = createStorageNode({ port: 0, dataDir: dir.path, fsync: "never" });
  const { coordinator, log } = await startCluster(t, [storage]);
  const prompts = await storagePrompts();
  const request = { prompts, sampling: { temperature: 0, maxTokens: MAX_TOKENS } };
  const reference = await generate(coordinator.address, request);
  assert.equal(reference.summary?.errors, 0);

  let damaged: { zeroed: string; nan: string; deleted: string } | undefined;
  const out = await generate(coordinator.address, request, async (ev) => {
    if (damaged || ev.event.case !== "progress" || ev.event.value.tokensGenerated < 8n) return;
    const dirs = await sequenceDirs(dir.path);
    assert.equal(dirs.length, 8);
    const [a, b, c] = [dirs[1]!, dirs[4]!, dirs[6]!];
    const layer0 = join(a.dir, "layer-0000.kv");
    // 4 KB zeroed at the start of a's first layer file (block 0).
    await overwriteAt(layer0, 0, new Uint8Array(4096));
    // One NaN in b's second layer file (its first K value).
    await overwriteAt(join(b.dir, "layer-0001.kv"), 0, new Uint8Array(new Float32Array([NaN]).buffer));
    // c's whole directory deleted under the running node (moved out first,
    // so that the node's next write cannot race the removal).
    const gone = `${dir.path}-gone`;
    await rename(c.dir, gone);
    await rm(gone, { recursive: true, force: true });
    damaged = { zeroed: prompts[a.index]!.id, nan: prompts[b.index]!.id, deleted: prompts[c.index]!.id };
    t.diagnostic(`damaged ${JSON.stringify(damaged)}; ${layer0}`);
  });
  assert.ok(damaged, "the job finished before the files were damaged");
  assertSameTokens(
    out,
    reference,
    prompts.map((p) => p.id),
  );
  assert.equal(out.summary?.errors, 0);
  // Each damaged sequence was named once, with its file (and block); no other was moved.
  const lines = rebuilt(log);
  assert.equal(lines.length, 3, lines.join("\n"));
  const lineOf = (id: string) => lines.find((l) => l.includes(`rebuilding prompt "${id}"`));
  assert.match(lineOf(damaged.zeroed) ?? "", /layer-0000\.kv: block 0 \(bytes 0-\d+\) fails its checksum/);
  assert.match(lineOf(damaged.nan) ?? "", /layer-0001\.kv: block 0 .* fails its checksum/);
  assert.match(lineOf(damaged.deleted) ?? "", /manifest\.json\.tmp: open failed: ENOENT/);
  for (const l of lines) assert.match(l, new RegExp(`storage-node ${storage.address}: sequence "`));
});

test("a storage-node restarted with one manifest deleted and one damaged: those two move at once, named; the rest resume", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  let storage = createStorageNode({ port: 0, dataDir: dir.path });
  await storage.start();
  const port = Number(storage.address.split(":").pop());
  await storage.close();
  storage = createStorageNode({ port, dataDir: dir.path });
  const { coordinator, log } = await startCluster(t, [storage]);
  const prompts = await storagePrompts();
  const request = { prompts, sampling: { temperature: 0, maxTokens: MAX_TOKENS } };
  const reference = await generate(coordinator.address, request);

  let damaged: { missing: string; corrupt: string } | undefined;
  let restarted: StorageNode | undefined;
  const out = await generate(coordinator.address, request, async (ev) => {
    if (damaged || ev.event.case !== "progress" || ev.event.value.tokensGenerated < 8n) return;
    await storage.close();
    const dirs = await sequenceDirs(dir.path);
    await rm(join(dirs[2]!.dir, "manifest.json"));
    await writeFile(join(dirs[5]!.dir, "manifest.json"), '{"format": "tessera-kv", "vers');
    damaged = { missing: prompts[dirs[2]!.index]!.id, corrupt: prompts[dirs[5]!.index]!.id };
    restarted = createStorageNode({ port, dataDir: dir.path });
    await restarted.start();
  });
  t.after(() => restarted?.close());
  assert.ok(damaged, "the job finished before the node restarted");
  assertSameTokens(
    out,
    reference,
    prompts.map((p) => p.id),
  );
  const lines = rebuilt(log);
  assert.equal(lines.length, 2, lines.join("\n"));
  assert.match(
    lines.find((l) => l.includes(`"${damaged!.missing}"`)) ?? "",
    /manifest\.json: manifest is missing/,
    lines.join("\n"),
  );
  assert.match(
    lines.find((l) => l.includes(`"${damaged!.corrupt}"`)) ?? "",
    /manifest\.json: corrupt manifest/,
    lines.join("\n"),
  );
});

test("a storage-node whose disk fills mid-job: its sequences move to a node with room (DISK_FULL, named)", async (t) => {
  const disk = await tmpfsDir("2m");
  if (!disk) return t.skip("mounting a tmpfs needs root");
  t.after(() => disk.remove());
  const small = disk.path;
  const roomy = await tempDir();
  t.after(() => roomy.remove());
  // The small disk is the cheap node: the plan puts the job there.
  const node = (dataDir: string, pricePerHour: number) =>
    createStorageNode({ port: 0, dataDir, fsync: "never", pricePerHour, readBytesPerSecond: 1e9 });
  const full = node(join(small, "kv"), 0.01);
  const other = node(roomy.path, 10);
  const { coordinator, log } = await startCluster(t, [full, other]);
  const prompts = await storagePrompts();
  const request = { prompts, sampling: { temperature: 0, maxTokens: MAX_TOKENS } };
  const reference = await generate(coordinator.address, request);

  const fill = () => fillDisk(small);
  let filled = false;
  const out = await generate(coordinator.address, request, async (ev) => {
    if (filled || ev.event.case !== "progress" || ev.event.value.tokensGenerated < 8n) return;
    filled = true;
    await fill();
  });
  assert.ok(filled);
  assertSameTokens(
    out,
    reference,
    prompts.map((p) => p.id),
  );
  const lines = rebuilt(log);
  assert.ok(lines.length >= 1, "no sequence was on the node whose disk filled");
  for (const l of lines) assert.match(l, new RegExp(`storage-node ${full.address}: sequence ".*ENOSPC`));
  // They moved to the node with room.
  const movedIds = prompts.filter((p) => lines.some((l) => l.includes(`"${p.id}"`))).map((p) => p.id);
  for (const id of movedIds) assert.equal(out.results.get(id)!.kvNode, `storage@${other.address}`, id);

  // The next job, with the disk full again (the first job's files there
  // are gone): OpenSequence there fails with DISK_FULL, and every prompt
  // is placed on the node with room.
  await fill();
  const next = await generate(coordinator.address, request);
  assertSameTokens(
    next,
    reference,
    prompts.map((p) => p.id),
  );
  for (const p of prompts) assert.equal(next.results.get(p.id)!.kvNode, `storage@${other.address}`, p.id);
  assert.ok(
    log.some((l) => l.includes("cannot open its KV cache") && l.includes(full.address) && l.includes("ENOSPC")),
    log.join("\n"),
  );
});

test("a full disk and no other storage-node: the sequences end with the named ENOSPC error, not a capacity wait", async (t) => {
  const disk = await tmpfsDir("1m");
  if (!disk) return t.skip("mounting a tmpfs needs root");
  t.after(() => disk.remove());
  const storage = createStorageNode({ port: 0, dataDir: join(disk.path, "kv"), fsync: "never" });
  const { coordinator } = await startCluster(t, [storage], 1500);
  await fillDisk(disk.path);
  const prompts = (await storagePrompts()).slice(0, 2);
  const out = await generate(coordinator.address, { prompts, sampling: { temperature: 0, maxTokens: 4 } });
  for (const p of prompts) {
    const r = out.results.get(p.id)!;
    assert.equal(r.finishReason, "error");
    assert.match(r.error, new RegExp(`storage-node ${storage.address}: .*${disk.path}/kv/seq-.*ENOSPC`), r.error);
  }
});
