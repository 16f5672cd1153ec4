/**
 * Issue 4, "two memory-nodes of different configured prices and
 * capacities": the coordinator reads each node's Info (price, read
 * bandwidth, room) at job start and places each sequence's KV cache on the
 * node where its attention costs least per token, the cheaper node until
 * its capacity is used, then the other; the tokens are those of a run on a
 * single node.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Attention, KvPlacement, createClient } from "@tessera/proto";
import { parsePromptsJsonl } from "@tessera/core";
import { createGpuNode } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate } from "@tessera/testing";

/** KV bytes of one stories260K position: 5 layers x (K + V) x 4 KV heads x head_dim 8 x 4 bytes. */
const KV_BYTES_PER_POSITION = 5 * 2 * 4 * 8 * 4;
const MAX_TOKENS = 24;

test("sequences fill the cheaper memory-node first, then the dearer one, with single-node tokens", async (t) => {
  const gpu = createGpuNode({ port: 0 });
  // Same bandwidth, so $/token is in proportion to price: cheap is a third of dear.
  // Cheap holds about five of the 16 sequences (each needs about 30 positions).
  const cheap = createMemoryNode({
    port: 0,
    pricePerHour: 1,
    readBytesPerSecond: 10e9,
    capacityBytes: 5 * 30 * KV_BYTES_PER_POSITION,
  });
  const dear = createMemoryNode({ port: 0, pricePerHour: 3, readBytesPerSecond: 10e9, capacityBytes: 64 * 1024 ** 2 });
  // Price unknown, bandwidth measured at start.
  const single = createMemoryNode({ port: 0 });
  await Promise.all([gpu, cheap, dear, single].map((n) => n.start()));
  const log: string[] = [];
  const coordinator = (memoryNodes: string[]) =>
    createCoordinator({
      gpuNodes: [gpu.address],
      memoryNodes,
      modelPath: bundled.model,
      tokenizerPath: bundled.tokenizer,
      log: (line) => log.push(line),
    });
  // dear is listed first: the least-loaded rule alone would start there.
  const priced = coordinator([dear.address, cheap.address]);
  const alone = coordinator([single.address]);
  await Promise.all([priced.start(), alone.start()]);
  const info = [cheap, dear, single].map((n) => createClient(Attention, n.address));
  t.after(async () => {
    info.forEach((c) => c.close());
    await Promise.all([priced.close(), alone.close()]);
    await Promise.all([gpu, cheap, dear, single].map((n) => n.close()));
  });

  const [cheapInfo, dearInfo, singleInfo] = await Promise.all(info.map((c) => c.info({})));
  assert.equal(cheapInfo!.pricePerHour, 1);
  assert.equal(cheapInfo!.readBytesPerSecond, 10e9);
  assert.equal(dearInfo!.pricePerHour, 3);
  assert.equal(singleInfo!.pricePerHour, 0);
  assert.ok(singleInfo!.readBytesPerSecond > 1e8, `measured ${singleInfo!.readBytesPerSecond} bytes/s`);

  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8")).map((p) => ({
    id: p.id,
    prompt: p.prompt,
  }));
  const request = { prompts, sampling: { temperature: 0, maxTokens: MAX_TOKENS }, kv: KvPlacement.MEMORY };
  const one = await generate(alone.address, request);
  const two = await generate(priced.address, request);
  assert.equal(two.summary?.errors, 0);

  // Where each sequence should be: in input order, cheap while its
  // reservation (prompt + max tokens - 1 positions) fits, else dear.
  let room = Number(cheapInfo!.capacityBytes);
  const expected = prompts.map((p) => {
    const bytes = (two.results.get(p.id)!.promptTokenIds.length + MAX_TOKENS - 1) * KV_BYTES_PER_POSITION;
    if (bytes > room) return `memory@${dear.address}`;
    room -= bytes;
    return `memory@${cheap.address}`;
  });
  assert.deepEqual(
    prompts.map((p) => two.results.get(p.id)!.kvNode),
    expected,
  );
  const onCheap = expected.filter((e) => e === `memory@${cheap.address}`).length;
  assert.ok(onCheap >= 3 && onCheap < prompts.length, `${onCheap} of ${prompts.length} on the cheap node`);
  for (const p of prompts) {
    assert.equal(two.results.get(p.id)!.error, "", p.id);
    assert.deepEqual(two.results.get(p.id)!.completionTokenIds, one.results.get(p.id)!.completionTokenIds, p.id);
  }
  // Every reservation was released.
  for (const c of info) assert.equal((await c.info({})).usedBytes, 0n);
  // The decision is logged with each node's price and predicted cost.
  const placed = log.find((l) => l.includes("placed 16 sequence(s)") && l.includes(cheap.address));
  assert.ok(placed, log.join("\n"));
  assert.match(
    placed,
    new RegExp(`${onCheap} on memory-node ${cheap.address} \\(\\$1/h, 10\\.0 GB/s; predicted \\$\\d`),
  );
  assert.match(placed, new RegExp(`${16 - onCheap} on memory-node ${dear.address} \\(\\$3/h`));
});
