/**
 * Issue 3, "hidden states passed gpu-node to gpu-node": a step sent to the
 * first pipeline stage with `next_stages` goes through every stage and comes
 * back as the last stage's logits, bit-identical to relaying the hidden
 * states by hand; the coordinator talks to the first stage only (a proxy in
 * front of a later stage sees the hidden states come from the first
 * gpu-node, not from the coordinator); a later stage that goes away fails
 * the step naming it, and the stream to it is re-opened when it is back.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect, type Server, type Socket } from "node:net";
import { readFile } from "node:fs/promises";
import { parsePromptsJsonl } from "@tessera/core";
import { loadCheckpoint } from "@tessera/model";
import {
  Attention,
  Code,
  GpuNode,
  createClient,
  type Client,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { createGpuNode, type GpuNode as GpuNodeService } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { createCoordinator } from "@tessera/coordinator";
import { bundled, generate, startInProcessCluster } from "@tessera/testing";

type Step = MessageInitShape<typeof ForwardRequestSchema> & { stepId: bigint };

/** A Forward stream read one response at a time. */
function openForward(t: { after(fn: () => unknown): void }, client: Client<typeof GpuNode>) {
  const call = client.forward();
  const waiting: ((r: ForwardResponse) => void)[] = [];
  call.on("data", (r: ForwardResponse) => waiting.shift()!(r));
  call.on("error", () => undefined);
  t.after(() => call.end());
  return (req: Step) =>
    new Promise<ForwardResponse>((resolve) => {
      waiting.push(resolve);
      call.write(req);
    });
}

async function startGpu(t: { after(fn: () => unknown): void }, port = 0) {
  const node = createGpuNode({ port, intraOpThreads: 1 });
  await node.start();
  const client = createClient(GpuNode, node.address);
  t.after(async () => {
    client.close();
    await node.close();
  });
  return { node, client };
}

const stages = [
  { layerStart: 0, layerEnd: 2, embed: true, head: false },
  { layerStart: 2, layerEnd: 4, embed: false, head: false },
  { layerStart: 4, layerEnd: 5, embed: false, head: true },
];

test("a step sent to the first of three stages with next_stages equals relaying hidden states by hand", async (t) => {
  const ckpt = await loadCheckpoint(bundled.model);
  const { nLayers, nHeads, nKvHeads, headDim, dim } = ckpt.shape;
  const memory = createMemoryNode({ port: 0 });
  await memory.start();
  t.after(() => memory.close());
  const attention = createClient(Attention, memory.address);
  t.after(() => attention.close());
  const open = (seqId: string) =>
    attention.openSequence({ seqId, layout: { nLayers, nHeads, nKvHeads, headDim }, maxPositions: 64 });

  const gpus = [await startGpu(t), await startGpu(t), await startGpu(t)];
  await Promise.all(gpus.map((g, i) => g.client.load({ modelPath: bundled.model, ...stages[i]! })));
  const [a, b, c] = gpus.map((g) => g.node.address) as [string, string, string];
  const direct = openForward(t, gpus[0]!.client);
  const byHand = gpus.map((g) => openForward(t, g.client));

  const prompts = [
    [1, 403, 407, 261, 378],
    [1, 56, 71],
  ];
  /** One step of both prompts: prefill, then decode of `tokens` at `pos`. */
  const step = (prefix: string, stepId: bigint, tokens: number[][], pos: number[]): Step => ({
    stepId,
    sequences: tokens.map((tk, i) => ({
      seqId: `${prefix}${i}`,
      startPos: pos[i]!,
      nTokens: tk.length,
      attentionAddress: memory.address,
    })),
    tokens: tokens.flat(),
  });
  for (const p of ["direct", "hand"]) for (const i of [0, 1]) await open(`${p}${i}`);

  let tokens = prompts;
  let pos = [0, 0];
  for (let s = 1n; s <= 3n; s++) {
    const req = step("direct", s, tokens, pos);
    const res = await direct({ ...req, nextStages: [b, c] });
    assert.equal(res.error, undefined, res.error?.message);
    assert.equal(res.stepId, s);
    assert.equal(res.hidden, undefined);

    const h = step("hand", s, tokens, pos);
    const r0 = await byHand[0]!(h);
    assert.deepEqual(r0.hidden!.shape, [tokens.flat().length, dim]);
    const r1 = await byHand[1]!({ stepId: s, sequences: h.sequences!, hidden: r0.hidden! });
    const r2 = await byHand[2]!({ stepId: s, sequences: h.sequences!, hidden: r1.hidden! });
    assert.equal(r2.error, undefined, r2.error?.message);
    assert.deepEqual(res.logits!.shape, [2, ckpt.shape.vocabSize]);
    assert.deepEqual(Buffer.from(res.logits!.data), Buffer.from(r2.logits!.data), `logits of step ${s}`);

    // Timings: this stage's own, then the later stages'; dense and attention summed.
    assert.equal(res.stageTimings.length, 3);
    const sum = (f: (x: (typeof res.stageTimings)[0]) => number) => res.stageTimings.reduce((acc, x) => acc + f(x), 0);
    const t0 = res.timings!;
    assert.ok(Math.abs(t0.denseSeconds - sum((x) => x.denseSeconds)) < 1e-9);
    assert.ok(Math.abs(t0.attentionWaitSeconds - sum((x) => x.attentionWaitSeconds)) < 1e-9);
    assert.ok(t0.totalSeconds >= sum((x) => x.totalSeconds) - 1e-6, "total includes the later stages");
    assert.ok(res.stageTimings.every((x) => x.denseSeconds > 0));

    const logits = new Float32Array(new Uint8Array(res.logits!.data).buffer);
    const next = [0, 1].map((i) => {
      const row = logits.subarray(i * 512, (i + 1) * 512);
      return row.indexOf(Math.max(...row));
    });
    pos = pos.map((p, i) => p + tokens[i]!.length);
    tokens = next.map((tk) => [tk]);
  }

  // A stage after the one that applies the head: that stage's
  // INVALID_ARGUMENT, passed back over two hops unchanged.
  const bad = await direct({ ...step("direct", 4n, tokens, pos), nextStages: [b, c, a] });
  assert.equal(bad.error?.code, Code.INVALID_ARGUMENT);
  assert.equal(bad.error?.role, "gpu");
  assert.equal(bad.error?.address, c);
  assert.match(bad.error!.message, /next_stages \[.*\] given to the stage that applies the head/);

  // The last stage goes away: the step fails naming it, UNAVAILABLE.
  const port = Number(c.split(":")[1]);
  await gpus[2]!.node.close();
  const gone = await direct({ ...step("direct", 5n, tokens, pos), nextStages: [b, c] });
  assert.equal(gone.error?.code, Code.UNAVAILABLE);
  assert.equal(gone.error?.role, "gpu");
  assert.equal(gone.error?.address, c);
  assert.match(gone.error!.message, new RegExp(`^gpu-node at ${c} is unreachable: `));

  // Back on the same port without a model: its own FAILED_PRECONDITION comes
  // through the same first-stage stream (the hop was re-opened).
  const again = await startGpu(t, port);
  assert.equal(again.node.address, c);
  const empty = await direct({ ...step("direct", 6n, tokens, pos), nextStages: [b, c] });
  assert.equal(empty.error?.code, Code.FAILED_PRECONDITION);
  assert.equal(empty.error?.address, c);
  assert.match(empty.error!.message, /no model is loaded/);

  // Loaded again, the pipeline answers: fresh sequences, same logits as by hand.
  await again.client.load({ modelPath: bundled.model, ...stages[2]! });
  const byHand2 = openForward(t, again.client);
  for (const p of ["direct2-", "hand2-"]) for (const i of [0, 1]) await open(`${p}${i}`);
  const res = await direct({ ...step("direct2-", 7n, prompts, [0, 0]), nextStages: [b, c] });
  assert.equal(res.error, undefined, res.error?.message);
  const h = step("hand2-", 7n, prompts, [0, 0]);
  const r0 = await byHand[0]!(h);
  const r1 = await byHand[1]!({ stepId: 7n, sequences: h.sequences!, hidden: r0.hidden! });
  const r2 = await byHand2({ stepId: 7n, sequences: h.sequences!, hidden: r1.hidden! });
  assert.deepEqual(Buffer.from(res.logits!.data), Buffer.from(r2.logits!.data));
});

/** A TCP proxy to `target` that counts the bytes each client connection sends, in order of connection. */
async function startProxy(t: { after(fn: () => unknown): void }, target: string) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const connections: { bytesIn: number }[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const entry = { bytesIn: 0 };
    connections.push(entry);
    const upstream = connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (d: Buffer) => (entry.bytesIn += d.length));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, connections };
}

test("the coordinator sends steps to the first stage only: hidden states reach later stages from the gpu-nodes", async (t) => {
  const { dim } = (await loadCheckpoint(bundled.model)).shape;
  // f32 on the wire: 3 stages must give 1 stage's exact tokens, and f16 rounding between stages can flip a near-tie.
  // Two coordinators load g0 with different ranges, one after the other: a
  // short lease lets the second in once the first is done.
  const cluster = await startInProcessCluster(t, { gpuNodes: 3, gpu: { wireDtype: "f32", leaseTtlMs: 100 } });
  const [g0, g1, g2] = cluster.gpus as [GpuNodeService, GpuNodeService, GpuNodeService];
  // The second stage is reached through a proxy, by the coordinator (Load)
  // and by the first stage (the hop) alike: each opens its own connection.
  const proxy = await startProxy(t, g1.address);
  const coordinator = (gpuNodes: string[]) => {
    const c = createCoordinator({
      gpuNodes,
      memoryNodes: [cluster.memories[0]!.address],
      modelPath: bundled.model,
      tokenizerPath: bundled.tokenizer,
      connectTimeoutMs: 1000,
      retryTimeoutMs: 1000,
      log: () => {},
    });
    t.after(() => c.close());
    return c;
  };
  const single = coordinator([g0.address]);
  const split = coordinator([g0.address, proxy.address, g2.address]);
  await Promise.all([single.start(), split.start()]);

  const prompts = parsePromptsJsonl(bundled.prompts, await readFile(bundled.prompts, "utf8"))
    .slice(0, 3)
    .map((p) => ({ id: p.id, prompt: p.prompt }));
  const request = { prompts, sampling: { temperature: 0, maxTokens: 32 } };
  const one = await generate(single.address, request);
  const three = await generate(split.address, request);
  assert.equal(three.summary?.errors, 0);
  for (const p of prompts) {
    assert.deepEqual(three.results.get(p.id)!.completionTokenIds, one.results.get(p.id)!.completionTokenIds, p.id);
  }

  // The coordinator's connection (the first: it waits for the node to be
  // ready before any step) carried the Load only; the hidden states of every
  // position fed (at least 2 bytes per value) came over the first stage's.
  const s = three.summary!;
  const rows = Number(s.promptTokens + s.completionTokens) - prompts.length;
  const hiddenBytes = rows * dim * 2;
  assert.ok(proxy.connections.length >= 2, `${proxy.connections.length} connection(s) to the second stage`);
  const [fromCoordinator, ...others] = proxy.connections;
  assert.ok(fromCoordinator!.bytesIn < 4096, `the coordinator sent ${fromCoordinator!.bytesIn} bytes to stage 2`);
  const fromStage = others.reduce((a, c) => a + c.bytesIn, 0);
  assert.ok(fromStage >= hiddenBytes, `${fromStage} bytes from the first stage, ${hiddenBytes} of hidden states`);
});

test("a later stage lost mid-job fails the job's sequences naming it, after the coordinator's retries", async (t) => {
  const { gpus, coordinator } = await startInProcessCluster(t, {
    gpuNodes: 3,
    coordinator: { retryTimeoutMs: 1000 },
  });
  const last = gpus[2]!;
  let closed = false;
  const out = await generate(
    coordinator.address,
    { prompts: [{ id: "a", prompt: "Once upon a time" }], sampling: { temperature: 0, maxTokens: 200 } },
    async (ev) => {
      if (!closed && ev.event.case === "progress" && ev.event.value.tokensGenerated > 0n) {
        closed = true;
        await last.close();
      }
    },
  );
  assert.ok(closed);
  const r = out.results.get("a")!;
  assert.equal(r.finishReason, "error");
  assert.match(r.error, new RegExp(`^gpu-node at ${last.address} is unreachable: `));
});
