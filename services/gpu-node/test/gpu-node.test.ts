/**
 * The gpu-node over real gRPC: Load, Forward steps (prefill of sequences of
 * different lengths, then decode) against minimal Attention servers written
 * here (K/V in a Map, naive causal attention), compared with core's
 * ReferenceModel; failures of attention nodes and bad requests answered per
 * step on a stream that stays open; Load errors naming the file.
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdtemp, open, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { ConfigError, parameterCount, f32Tensor, tensorF32 as coreTensorF32 } from "@tessera/core";
import { ReferenceModel, loadCheckpoint, type Checkpoint } from "@tessera/model";
import { startGrpcServer, type GrpcServer } from "@tessera/rpc";
import {
  Attention,
  Code,
  DType,
  GpuNode,
  RpcError,
  addService,
  checkHealth,
  createClient,
  type AttendRequest,
  type AttendResponseSchema,
  type Client,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
} from "@tessera/proto";
import {
  compileGpuNodeOptions,
  createGpuNode,
  type GpuNode as GpuNodeService,
  type GpuNodeOptions,
} from "../src/index.js";

const MODEL = fileURLToPath(new URL("../../../../shared/models/stories260K.bin", import.meta.url));
const TOL = 1e-4;

const tensorF32 = coreTensorF32;

let ckpt: Checkpoint;
let reference: ReferenceModel;
let tmp: string;
const closers: (() => Promise<void> | void)[] = [];

before(async () => {
  ckpt = await loadCheckpoint(MODEL);
  reference = new ReferenceModel(ckpt);
  tmp = await mkdtemp(join(tmpdir(), "tessera-gpu-node-"));
});

after(async () => {
  for (const c of closers.reverse()) await c();
  await rm(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// A minimal Attention server: K/V of each sequence in a Map, naive attention.

interface TestAttention {
  server: GrpcServer;
  address: string;
  /** AttendRequests received, as (step, layer, seq ids, rows, dtype of q/k/v). */
  log: { stepId: bigint; layer: number; seqIds: string[]; rows: number; dtypes: DType[] }[];
  close(): Promise<void>;
}

/** Sequence ids starting with "bad" get a per-request NOT_FOUND error. */
async function startAttention(port = 0): Promise<TestAttention> {
  const { nLayers, nHeads, nKvHeads, headDim, seqLen } = ckpt.shape;
  const kvDim = nKvHeads * headDim;
  const kv = new Map<string, { k: Float32Array[]; v: Float32Array[] }>();
  const log: TestAttention["log"] = [];
  const attend = (req: AttendRequest): MessageInitShape<typeof AttendResponseSchema> => {
    const q = tensorF32(req.q, "q");
    const k = tensorF32(req.k, "k");
    const v = tensorF32(req.v, "v");
    const rows = req.items.reduce((a, it) => a + it.nTokens, 0);
    log.push({
      stepId: req.stepId,
      layer: req.layer,
      seqIds: req.items.map((i) => i.seqId),
      rows,
      dtypes: [req.q!.dtype, req.k!.dtype, req.v!.dtype],
    });
    assert.deepEqual(req.q!.shape, [rows, nHeads, headDim]);
    assert.deepEqual(req.k!.shape, [rows, nKvHeads, headDim]);
    const bad = req.items.find((it) => it.seqId.startsWith("bad"));
    if (bad)
      return {
        stepId: req.stepId,
        layer: req.layer,
        error: { code: Code.NOT_FOUND, message: `unknown sequence ${bad.seqId}` },
      };
    const o = new Float32Array(rows * nHeads * headDim);
    let row = 0;
    for (const it of req.items) {
      let s = kv.get(it.seqId);
      if (!s) {
        s = {
          k: Array.from({ length: nLayers }, () => new Float32Array(seqLen * kvDim)),
          v: Array.from({ length: nLayers }, () => new Float32Array(seqLen * kvDim)),
        };
        kv.set(it.seqId, s);
      }
      const K = s.k[req.layer]!;
      const V = s.v[req.layer]!;
      for (let j = 0; j < it.nTokens; j++) {
        K.set(k.subarray((row + j) * kvDim, (row + j + 1) * kvDim), (it.startPos + j) * kvDim);
        V.set(v.subarray((row + j) * kvDim, (row + j + 1) * kvDim), (it.startPos + j) * kvDim);
      }
      for (let j = 0; j < it.nTokens; j++) {
        const pos = it.startPos + j;
        for (let h = 0; h < nHeads; h++) {
          const qo = ((row + j) * nHeads + h) * headDim;
          const kvo = Math.floor(h / (nHeads / nKvHeads)) * headDim;
          const scores = [];
          for (let t = 0; t <= pos; t++) {
            let dot = 0;
            for (let i = 0; i < headDim; i++) dot += q[qo + i]! * K[t * kvDim + kvo + i]!;
            scores.push(dot / Math.sqrt(headDim));
          }
          const max = Math.max(...scores);
          const e = scores.map((x) => Math.exp(x - max));
          const sum = e.reduce((a, b) => a + b, 0);
          for (let i = 0; i < headDim; i++) {
            let acc = 0;
            for (let t = 0; t <= pos; t++) acc += (e[t]! / sum) * V[t * kvDim + kvo + i]!;
            o[qo + i] = acc;
          }
        }
      }
      row += it.nTokens;
    }
    return { stepId: req.stepId, layer: req.layer, o: f32Tensor(o, [rows, nHeads * headDim]), computeSeconds: 0.25 };
  };
  const server = await startGrpcServer("127.0.0.1", port, ["tessera.v1.Attention"], (s) =>
    addService(s, Attention, {
      openSequence: async () => ({ length: 0, reservedBytes: 0n }),
      closeSequence: async (req) => {
        kv.delete(req.seqId);
        return {};
      },
      info: async () => ({ role: "memory", sequences: kv.size }),
      attend: async (call) => {
        for await (const req of call as AsyncIterable<AttendRequest>) call.write(attend(req));
      },
    }),
  );
  let closed = false;
  return {
    server,
    address: server.address,
    log,
    close: async () => {
      if (closed) return;
      closed = true;
      await server.shutdown(0);
    },
  };
}

// ---------------------------------------------------------------------------
// Helpers: a started gpu-node, a Forward stream read one response at a time.

async function startGpuNode(
  options: GpuNodeOptions = {},
): Promise<{ node: GpuNodeService; client: Client<typeof GpuNode> }> {
  // f32 on the wire unless a test asks: these tests hold logits to 1e-4.
  const node = createGpuNode({ intraOpThreads: 1, wireDtype: "f32", ...options });
  await node.start();
  const client = createClient(GpuNode, node.address);
  closers.push(async () => {
    client.close();
    await node.close();
  });
  return { node, client };
}

interface ForwardStream {
  step(req: MessageInitShape<typeof ForwardRequestSchema>): Promise<ForwardResponse>;
  end(): void;
}

function openForward(client: Client<typeof GpuNode>): ForwardStream {
  const call = client.forward();
  const waiting: ((r: ForwardResponse) => void)[] = [];
  call.on("data", (r: ForwardResponse) => waiting.shift()!(r));
  call.on("error", () => undefined);
  const s = {
    step: (req: MessageInitShape<typeof ForwardRequestSchema>) =>
      new Promise<ForwardResponse>((resolve) => {
        waiting.push(resolve);
        call.write(req);
      }),
    end: () => call.end(),
  };
  closers.push(() => {
    call.end();
    call.cancel();
  });
  return s;
}

/** Reference logits of each prompt after its tokens, then after each decode token. */
function referenceLogits(tokens: number[]): Float32Array[] {
  const state = reference.createState(64);
  return tokens.map((t, pos) => reference.forward(state, t, pos).slice());
}

function assertClose(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  assert.ok(worst <= TOL, `${what}: max |diff| ${worst}`);
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

// ---------------------------------------------------------------------------

test("Load reports the shape, provider and weight bytes, is idempotent, and health is SERVING", async () => {
  const { node, client } = await startGpuNode();
  assert.equal(node.role, "gpu");
  assert.equal(node.state, "running");
  assert.equal(await checkHealth(node.address, "tessera.v1.GpuNode"), "SERVING");
  const res = await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen, headDim } = ckpt.shape;
  assert.deepEqual(
    {
      dim: res.shape!.dim,
      hiddenDim: res.shape!.hiddenDim,
      nLayers: res.shape!.nLayers,
      nHeads: res.shape!.nHeads,
      nKvHeads: res.shape!.nKvHeads,
    },
    { dim, hiddenDim, nLayers, nHeads, nKvHeads },
  );
  assert.deepEqual(
    [res.shape!.vocabSize, res.shape!.seqLen, res.shape!.headDim, res.shape!.ropeTheta],
    [vocabSize, seqLen, headDim, 10000],
  );
  assert.equal(res.executionProvider, "cpu");
  // Every weight, with the embedding and the classifier counted apart (the node holds both).
  assert.equal(res.weightBytes, BigInt(4 * parameterCount(ckpt.shape, false)));
  const again = await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  assert.equal(again.loadSeconds, res.loadSeconds);
});

test("Forward: prefill of three sequences on two attention nodes in one step, then decode, match the reference forward", async () => {
  const a1 = await startAttention();
  const a2 = await startAttention();
  closers.push(
    () => a1.close(),
    () => a2.close(),
  );
  const { client } = await startGpuNode();
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const fwd = openForward(client);

  const prompts = { a: [1, 403, 407, 261, 378], b: [1, 56, 71], c: [1, 300, 301, 302, 303, 304, 305, 306] };
  const placement = { a: a1.address, b: a2.address, c: a1.address };
  const ids = ["a", "b", "c"] as const;
  const prefill = await fwd.step({
    stepId: 1n,
    sequences: ids.map((id) => ({
      seqId: id,
      startPos: 0,
      nTokens: prompts[id].length,
      attentionAddress: placement[id],
    })),
    tokens: ids.flatMap((id) => prompts[id]),
  });
  assert.equal(prefill.error, undefined);
  assert.equal(prefill.stepId, 1n);
  assert.deepEqual(prefill.logits!.shape, [3, ckpt.shape.vocabSize]);
  const logits1 = tensorF32(prefill.logits);
  const next = ids.map((_, i) => argmax(logits1.subarray(i * 512, (i + 1) * 512)));
  ids.forEach((id, i) => {
    const ref = referenceLogits([...prompts[id], next[i]!]);
    assertClose(logits1.subarray(i * 512, (i + 1) * 512), ref[prompts[id].length - 1]!, `prefill logits of ${id}`);
  });
  // Node 1 got a and c (not adjacent in the batch) in one request per layer.
  assert.deepEqual(
    a1.log.map((l) => [l.stepId, l.layer, l.seqIds, l.rows]),
    [0, 1, 2, 3, 4].map((layer) => [1n, layer, ["a", "c"], 13]),
  );
  assert.deepEqual(
    a2.log.map((l) => [l.layer, l.seqIds, l.rows]),
    [0, 1, 2, 3, 4].map((layer) => [layer, ["b"], 3]),
  );
  const t = prefill.timings!;
  assert.equal(t.attentionComputeSeconds, 5 * 0.25);
  assert.ok(
    t.denseSeconds > 0 && t.attentionWaitSeconds > 0 && t.totalSeconds >= t.denseSeconds + t.attentionWaitSeconds,
  );

  const decode = await fwd.step({
    stepId: 2n,
    sequences: ids.map((id) => ({
      seqId: id,
      startPos: prompts[id].length,
      nTokens: 1,
      attentionAddress: placement[id],
    })),
    tokens: next,
  });
  assert.equal(decode.error, undefined);
  const logits2 = tensorF32(decode.logits);
  ids.forEach((id, i) => {
    const ref = referenceLogits([...prompts[id], next[i]!]);
    assertClose(logits2.subarray(i * 512, (i + 1) * 512), ref[prompts[id].length]!, `decode logits of ${id}`);
  });
});

test("Forward across two pipeline stages: hidden from layers [0, 3) feeds layers [3, 5) + head", async () => {
  const att = await startAttention();
  closers.push(() => att.close());
  const first = await startGpuNode();
  const second = await startGpuNode();
  const l1 = await first.client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 3, embed: true, head: false });
  const l2 = await second.client.load({ modelPath: MODEL, layerStart: 3, layerEnd: 5, embed: false, head: true });
  assert.ok(l1.weightBytes > 0n && l2.weightBytes > 0n);
  const f1 = openForward(first.client);
  const f2 = openForward(second.client);
  const prompt = [1, 403, 407, 261];
  const sequences = [{ seqId: "p", startPos: 0, nTokens: prompt.length, attentionAddress: att.address }];
  const r1 = await f1.step({ stepId: 7n, sequences, tokens: prompt });
  assert.equal(r1.error, undefined);
  assert.equal(r1.logits, undefined);
  assert.deepEqual(r1.hidden!.shape, [4, ckpt.shape.dim]);
  const r2 = await f2.step({ stepId: 7n, sequences, hidden: r1.hidden });
  assert.equal(r2.error, undefined);
  assertClose(tensorF32(r2.logits), referenceLogits(prompt)[3]!, "logits after two stages");
  assert.deepEqual(
    att.log.map((l) => l.layer),
    [0, 1, 2, 3, 4],
  );
});

test("wireDtype f16: q/k/v and hidden travel as f16, the next stage and an f32-answering node are accepted", async () => {
  const att = await startAttention(); // answers o in f32 whatever it is sent
  closers.push(() => att.close());
  const first = await startGpuNode({ wireDtype: "f16" });
  const second = await startGpuNode({ wireDtype: "f16" });
  await first.client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 3, embed: true, head: false });
  await second.client.load({ modelPath: MODEL, layerStart: 3, layerEnd: 5, embed: false, head: true });
  const prompt = [1, 403, 407, 261];
  const sequences = [{ seqId: "p", startPos: 0, nTokens: prompt.length, attentionAddress: att.address }];
  const r1 = await openForward(first.client).step({ stepId: 1n, sequences, tokens: prompt });
  assert.equal(r1.error, undefined);
  assert.equal(r1.hidden!.dtype, DType.DTYPE_F16);
  assert.equal(r1.hidden!.data.byteLength, 2 * prompt.length * ckpt.shape.dim);
  const r2 = await openForward(second.client).step({ stepId: 1n, sequences, hidden: r1.hidden });
  assert.equal(r2.error, undefined);
  assert.equal(r2.logits!.dtype, DType.DTYPE_F32);
  assert.deepEqual(
    att.log.map((l) => l.dtypes),
    Array.from({ length: 5 }, () => [DType.DTYPE_F16, DType.DTYPE_F16, DType.DTYPE_F16]),
  );
  // f16 rounding (relative 2^-11 per activation) moves these logits by
  // ~1e-2 at most; the most likely next token does not change.
  const logits = tensorF32(r2.logits);
  const ref = referenceLogits(prompt)[3]!;
  let worst = 0;
  for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(logits[i]! - ref[i]!));
  assert.ok(worst > 0 && worst <= 0.05, `max |diff| ${worst}`);
  assert.equal(argmax(logits), argmax(ref));
});

test("microBatches 2 and 4 give the prefill and decode logits of microBatches 1, in the request's order", async () => {
  const a1 = await startAttention();
  const a2 = await startAttention();
  closers.push(
    () => a1.close(),
    () => a2.close(),
  );
  const prompts = [
    [1, 403, 407, 261, 378],
    [1, 56, 71],
    [1, 300, 301, 302, 303, 304, 305, 306],
    [1, 9],
    [1, 77, 78, 79],
  ];
  const at = (i: number) => (i % 3 === 1 ? a2.address : a1.address);
  const runSteps = async (microBatches: number, maxInFlight: number) => {
    const { client } = await startGpuNode({ microBatches, maxInFlight });
    await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
    const fwd = openForward(client);
    // Sequence ids apart per run: each run has its own caches on the shared nodes.
    const id = (i: number) => `m${microBatches}-${i}`;
    const prefill = await fwd.step({
      stepId: 1n,
      sequences: prompts.map((p, i) => ({ seqId: id(i), startPos: 0, nTokens: p.length, attentionAddress: at(i) })),
      tokens: prompts.flat(),
    });
    assert.equal(prefill.error, undefined);
    assert.deepEqual(prefill.logits!.shape, [prompts.length, 512]);
    const decode = await fwd.step({
      stepId: 2n,
      sequences: prompts.map((p, i) => ({ seqId: id(i), startPos: p.length, nTokens: 1, attentionAddress: at(i) })),
      tokens: prompts.map((_, i) => 100 + i),
    });
    assert.equal(decode.error, undefined);
    return { prefill: tensorF32(prefill.logits), decode: tensorF32(decode.logits), timings: decode.timings! };
  };
  const one = await runSteps(1, 2);
  // The single batch matches the reference model, so the others are checked against it.
  prompts.forEach((p, i) => {
    const ref = referenceLogits([...p, 100 + i]);
    assertClose(one.prefill.subarray(i * 512, (i + 1) * 512), ref[p.length - 1]!, `prefill logits of ${i}`);
    assertClose(one.decode.subarray(i * 512, (i + 1) * 512), ref[p.length]!, `decode logits of ${i}`);
  });
  const closeTo = (actual: Float32Array, expected: Float32Array, what: string) => {
    let worst = 0;
    for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
    assert.ok(worst <= 1e-5, `${what}: max |diff| ${worst}`);
  };
  const before = a1.log.length;
  for (const [k, inFlight] of [
    [2, 2],
    [4, 2],
    [4, 4],
  ] as const) {
    const r = await runSteps(k, inFlight);
    closeTo(r.prefill, one.prefill, `prefill logits, ${k} micro-batches`);
    closeTo(r.decode, one.decode, `decode logits, ${k} micro-batches`);
    // Each micro-batch adds the slowest node's 0.25 s per layer.
    assert.equal(r.timings.attentionComputeSeconds, k * 5 * 0.25);
    assert.ok(r.timings.totalSeconds >= r.timings.denseSeconds + r.timings.attentionWaitSeconds);
  }
  // microBatches 2 splits the decode step's 5 single-token sequences 3 + 2:
  // node 1 (sequences 0, 2, 3) gets [0, 2] from the first micro-batch, [3] from the second.
  const decodeOf2 = a1.log
    .slice(before)
    .filter((l) => l.stepId === 2n && l.seqIds[0]!.startsWith("m2-"))
    .map((l) => [l.layer, l.seqIds]);
  assert.deepEqual(
    decodeOf2.filter(([layer]) => layer === 0),
    [
      [0, ["m2-0", "m2-2"]],
      [0, ["m2-3"]],
    ],
  );
});

test("an attention error in one micro-batch fails the step with its code and address; the stream goes on", async () => {
  const att = await startAttention();
  closers.push(() => att.close());
  const { client } = await startGpuNode({ microBatches: 2 });
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const fwd = openForward(client);
  const bad = await fwd.step({
    stepId: 1n,
    sequences: [
      { seqId: "ok1", startPos: 0, nTokens: 2, attentionAddress: att.address },
      { seqId: "bad1", startPos: 0, nTokens: 2, attentionAddress: att.address },
    ],
    tokens: [1, 56, 1, 71],
  });
  assert.equal(bad.logits, undefined);
  assert.deepEqual(
    { code: bad.error?.code, message: bad.error?.message, role: bad.error?.role, address: bad.error?.address },
    {
      code: Code.NOT_FOUND,
      message: `attention node ${att.address}: layer 0: unknown sequence bad1`,
      role: "attention",
      address: att.address,
    },
  );
  const good = await fwd.step({
    stepId: 2n,
    sequences: [
      { seqId: "g1", startPos: 0, nTokens: 2, attentionAddress: att.address },
      { seqId: "g2", startPos: 0, nTokens: 1, attentionAddress: att.address },
    ],
    tokens: [1, 56, 1],
  });
  assert.equal(good.error, undefined);
  const logits = tensorF32(good.logits);
  assertClose(logits.subarray(0, 512), referenceLogits([1, 56])[1]!, "logits of g1");
  assertClose(logits.subarray(512), referenceLogits([1])[0]!, "logits of g2");
});

test("an attention node that is down fails the step UNAVAILABLE naming its address; the same stream succeeds once it is up", async () => {
  const probe = await startAttention();
  const address = probe.address;
  const port = Number(address.split(":")[1]);
  await probe.close();
  const { client } = await startGpuNode();
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const fwd = openForward(client);
  const prompt = [1, 403, 407];
  const req = {
    stepId: 3n,
    sequences: [{ seqId: "s", startPos: 0, nTokens: 3, attentionAddress: address }],
    tokens: prompt,
  };
  const failed = await fwd.step(req);
  assert.equal(failed.stepId, 3n);
  assert.equal(failed.logits, undefined);
  assert.equal(failed.error?.code, Code.UNAVAILABLE);
  assert.equal(failed.error?.role, "attention");
  assert.equal(failed.error?.address, address);
  assert.match(failed.error!.message, new RegExp(`^layer 0: attention node ${address}: UNAVAILABLE: `));

  const att = await startAttention(port);
  closers.push(() => att.close());
  const ok = await fwd.step(req);
  assert.equal(ok.error, undefined);
  assertClose(tensorF32(ok.logits), referenceLogits(prompt)[2]!, "logits after retry");

  // The node goes down between steps: the broken Attend stream is dropped
  // and re-created when the node is back.
  await att.close();
  const decode = {
    stepId: 4n,
    sequences: [{ seqId: "s", startPos: 3, nTokens: 1, attentionAddress: address }],
    tokens: [300],
  };
  const failed2 = await fwd.step(decode);
  assert.equal(failed2.error?.code, Code.UNAVAILABLE);
  assert.equal(failed2.error?.address, address);
  const att2 = await startAttention(port);
  closers.push(() => att2.close());
  // The new node lost the cache: re-send the prompt (overwrites), then decode.
  assert.equal((await fwd.step({ ...req, stepId: 5n })).error, undefined);
  const ok2 = await fwd.step({ ...decode, stepId: 6n });
  assert.equal(ok2.error, undefined);
  assertClose(tensorF32(ok2.logits), referenceLogits([...prompt, 300])[3]!, "decode logits after the node came back");
});

test("a per-request attention error fails the step with its code and address; other steps on the stream go on", async () => {
  const att = await startAttention();
  closers.push(() => att.close());
  const { client } = await startGpuNode();
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const fwd = openForward(client);
  const bad = await fwd.step({
    stepId: 1n,
    sequences: [{ seqId: "bad1", startPos: 0, nTokens: 1, attentionAddress: att.address }],
    tokens: [1],
  });
  assert.deepEqual(
    { code: bad.error?.code, message: bad.error?.message, role: bad.error?.role, address: bad.error?.address },
    {
      code: Code.NOT_FOUND,
      message: `attention node ${att.address}: layer 0: unknown sequence bad1`,
      role: "attention",
      address: att.address,
    },
  );
  const good = await fwd.step({
    stepId: 2n,
    sequences: [{ seqId: "g", startPos: 0, nTokens: 1, attentionAddress: att.address }],
    tokens: [1],
  });
  assert.equal(good.error, undefined);
  assertClose(tensorF32(good.logits), referenceLogits([1])[0]!, "logits of BOS");
});

test("an attention node that does not answer within attentionTimeoutMs fails the step DEADLINE_EXCEEDED", async () => {
  const silent = await startGrpcServer("127.0.0.1", 0, ["tessera.v1.Attention"], (s) =>
    addService(s, Attention, {
      openSequence: async () => ({}),
      closeSequence: async () => ({}),
      info: async () => ({}),
      attend: (call) =>
        new Promise<void>((resolve) => {
          call.on("data", () => undefined);
          call.on("cancelled", () => resolve());
          call.on("end", () => resolve());
        }),
    }),
  );
  closers.push(() => silent.shutdown(0));
  const node = createGpuNode({ intraOpThreads: 1, attentionTimeoutMs: 200 });
  await node.start();
  const client = createClient(GpuNode, node.address);
  closers.push(async () => {
    client.close();
    await node.close();
  });
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const fwd = openForward(client);
  const r = await fwd.step({
    stepId: 1n,
    sequences: [{ seqId: "s", startPos: 0, nTokens: 1, attentionAddress: silent.address }],
    tokens: [1],
  });
  assert.deepEqual(
    { code: r.error?.code, message: r.error?.message, role: r.error?.role, address: r.error?.address },
    {
      code: Code.DEADLINE_EXCEEDED,
      message: `layer 0: attention node ${silent.address}: DEADLINE_EXCEEDED: no Attend response within 200 ms`,
      role: "attention",
      address: silent.address,
    },
  );
});

test("bad Forward requests get per-step INVALID_ARGUMENT / FAILED_PRECONDITION and the stream stays open", async () => {
  const att = await startAttention();
  closers.push(() => att.close());
  const { node, client } = await startGpuNode();
  const fwd = openForward(client);
  const seq = (startPos: number, nTokens: number) => [{ seqId: "x", startPos, nTokens, attentionAddress: att.address }];
  const notLoaded = await fwd.step({ stepId: 1n, sequences: seq(0, 1), tokens: [1] });
  assert.deepEqual(
    {
      code: notLoaded.error?.code,
      message: notLoaded.error?.message,
      role: notLoaded.error?.role,
      address: notLoaded.error?.address,
    },
    {
      code: Code.FAILED_PRECONDITION,
      message: "no model is loaded: call Load first",
      role: "gpu",
      address: node.address,
    },
  );
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const cases: [MessageInitShape<typeof ForwardRequestSchema>, string][] = [
    [
      { stepId: 2n, sequences: seq(0, 2), tokens: [1, 512] },
      "step 2: token 512 at index 1 is outside the vocabulary [0, 512)",
    ],
    [
      { stepId: 3n, sequences: seq(510, 3), tokens: [1, 2, 3] },
      'step 3: sequence "x": positions [510, 513) exceed the model\'s seq_len 512',
    ],
    [{ stepId: 4n, sequences: seq(0, 2), tokens: [1] }, "step 4: 1 tokens for 2 new positions"],
    [{ stepId: 5n, sequences: [], tokens: [] }, "step 5: no sequences"],
    [
      { stepId: 6n, sequences: [{ seqId: "y", startPos: 0, nTokens: 1, attentionAddress: "" }], tokens: [1] },
      'step 6: sequence "y" has no attention_address and no shards',
    ],
    [{ stepId: 7n, sequences: [...seq(0, 1), ...seq(1, 1)], tokens: [1, 2] }, 'step 7: sequence "x" appears twice'],
    // KV-head shards (stories260K has 4 KV heads).
    [
      {
        stepId: 70n,
        sequences: [{ ...seq(0, 1)[0]!, shards: [{ address: att.address, seqId: "x#h0-4", kvHeadEnd: 4 }] }],
        tokens: [1],
      },
      'step 70: sequence "x" has both attention_address and shards',
    ],
    [
      {
        stepId: 71n,
        sequences: [
          {
            seqId: "y",
            nTokens: 1,
            shards: [
              { address: att.address, seqId: "y#a", kvHeadStart: 0, kvHeadEnd: 2 },
              { address: att.address, seqId: "y#b", kvHeadStart: 3, kvHeadEnd: 4 },
            ],
          },
        ],
        tokens: [1],
      },
      'step 71: sequence "y": shards[1] has KV heads [3, 4); shards must cover [0, 4) in order, from 2',
    ],
    [
      {
        stepId: 72n,
        sequences: [{ seqId: "y", nTokens: 1, shards: [{ address: att.address, seqId: "y#a", kvHeadEnd: 2 }] }],
        tokens: [1],
      },
      'step 72: sequence "y": shards cover KV heads [0, 2) of 4',
    ],
    [
      {
        stepId: 73n,
        sequences: [{ seqId: "y", nTokens: 1, shards: [{ address: att.address, kvHeadEnd: 4 }] }],
        tokens: [1],
      },
      'step 73: sequence "y": shards[0].seq_id is empty',
    ],
    [
      {
        stepId: 74n,
        sequences: ["y", "z"].map((seqId) => ({
          seqId,
          nTokens: 1,
          shards: [{ address: att.address, seqId: "same", kvHeadEnd: 4 }],
        })),
        tokens: [1, 1],
      },
      `step 74: attention node ${att.address} is sent sequence "same" twice`,
    ],
  ];
  for (const [req, message] of cases) {
    const r = await fwd.step(req);
    assert.equal(r.stepId, req.stepId);
    assert.deepEqual({ code: r.error?.code, message: r.error?.message }, { code: Code.INVALID_ARGUMENT, message });
  }
  assert.equal(att.log.length, 0);
  const ok = await fwd.step({ stepId: 8n, sequences: seq(0, 1), tokens: [1] });
  assert.equal(ok.error, undefined);

  // A later stage checks the hidden tensor's shape.
  await client.load({ modelPath: MODEL, layerStart: 3, layerEnd: 5, embed: false, head: true });
  const wrong = await fwd.step({ stepId: 9n, sequences: seq(1, 2), hidden: f32Tensor(new Float32Array(64), [1, 64]) });
  assert.deepEqual(
    { code: wrong.error?.code, message: wrong.error?.message },
    { code: Code.INVALID_ARGUMENT, message: "step 9: hidden has shape [1, 64], expected [2, 64]" },
  );
});

test("Load of a missing or truncated checkpoint fails naming the file; a bad layer range is INVALID_ARGUMENT", async () => {
  const { client } = await startGpuNode();
  const missing = join(tmp, "nope.bin");
  await assert.rejects(
    client.load({ modelPath: missing, layerStart: 0, layerEnd: 1, embed: true, head: true }),
    (err: unknown) => {
      assert.ok(err instanceof RpcError);
      assert.equal(err.code, Code.NOT_FOUND);
      assert.match(err.message, new RegExp(`^${missing}: cannot read checkpoint: ENOENT`));
      return true;
    },
  );
  const truncated = join(tmp, "truncated.bin");
  await copyFile(MODEL, truncated);
  const fh = await open(truncated, "r+");
  await fh.truncate(100_000);
  await fh.close();
  await assert.rejects(
    client.load({ modelPath: truncated, layerStart: 0, layerEnd: 1, embed: true, head: true }),
    (err: unknown) => {
      assert.ok(err instanceof RpcError);
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      assert.equal(
        err.message,
        `${truncated}: size does not match its llama2c-legacy header (expected 1056540 bytes, found 100000)`,
      );
      return true;
    },
  );
  await assert.rejects(client.load({ modelPath: MODEL, layerStart: 2, layerEnd: 6, embed: false, head: false }), {
    code: Code.INVALID_ARGUMENT,
    message: `${MODEL}: layer range [2, 6) is not inside its 5 layers`,
  });
});

const cudaInstalled = existsSync(
  join(
    createRequire(import.meta.url).resolve("onnxruntime-node"),
    "../../bin/napi-v6",
    process.platform,
    process.arch,
    "libonnxruntime_providers_cuda.so",
  ),
);

test(
  "executionProvider cuda without onnxruntime's CUDA binaries fails Load FAILED_PRECONDITION",
  { skip: cudaInstalled && "CUDA binaries are installed" },
  async () => {
    const node = createGpuNode({ executionProvider: "cuda" });
    await node.start();
    const client = createClient(GpuNode, node.address);
    try {
      await assert.rejects(
        client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 1, embed: true, head: true }),
        (err: unknown) => {
          assert.ok(err instanceof RpcError);
          assert.equal(err.code, Code.FAILED_PRECONDITION);
          assert.match(err.message, /^executionProvider: "cuda" is not available in this onnxruntime-node build: /);
          return true;
        },
      );
    } finally {
      client.close();
      await node.close();
    }
  },
);

test("options are validated by name", () => {
  assert.throws(
    () => createGpuNode({ port: 70000 }),
    new ConfigError("port", "must be an integer in [0, 65535], got 70000"),
  );
  assert.throws(
    () => createGpuNode({ executionProvider: "tpu" }),
    new ConfigError("executionProvider", 'must be "cpu" or "cuda", got "tpu"'),
  );
  assert.throws(
    () => createGpuNode({ intraOpThreads: 0 }),
    new ConfigError("intraOpThreads", "must be a positive integer, got 0"),
  );
  assert.throws(
    () => createGpuNode({ microBatches: 0 }),
    new ConfigError("microBatches", "must be a positive integer, got 0"),
  );
  assert.throws(
    () => createGpuNode({ maxInFlight: 1.5 }),
    new ConfigError("maxInFlight", "must be a positive integer, got 1.5"),
  );
  assert.throws(
    () => createGpuNode({ wireDtype: "bf16" as "f16" }),
    new ConfigError("wireDtype", 'must be "f16" or "f32", got "bf16"'),
  );
  assert.throws(
    () => createGpuNode({ weightDtype: "bf16" as "f16" }),
    new ConfigError("weightDtype", 'must be "auto", "f16" or "f32", got "bf16"'),
  );
  assert.throws(
    () => createGpuNode({ downstreamTimeoutMs: 0 }),
    new ConfigError("downstreamTimeoutMs", "must be a positive number of milliseconds, got 0"),
  );
  assert.throws(
    () => createGpuNode({ leaseTtlMs: -1 }),
    new ConfigError("leaseTtlMs", "must be a positive number of milliseconds, got -1"),
  );
  const node = createGpuNode({ port: 0 });
  assert.equal(Object.isFrozen(node.options), true);
  const { log, ...rest } = node.options;
  assert.equal(typeof log, "function");
  assert.deepEqual(rest, {
    host: "127.0.0.1",
    port: 0,
    executionProvider: "cpu",
    intraOpThreads: undefined,
    attentionTimeoutMs: 120_000,
    shutdownGraceMs: 5_000,
    microBatches: 1,
    maxInFlight: 2,
    wireDtype: "f16",
    weightDtype: "f32", // "auto" on the CPU provider
    downstreamTimeoutMs: 300_000,
    leaseTtlMs: 10_000,
    pricePerHour: 0,
    profile: "off",
  });
  assert.equal(compileGpuNodeOptions({ executionProvider: "cuda" }).weightDtype, "f16");
  assert.equal(compileGpuNodeOptions({ weightDtype: "f16" }).weightDtype, "f16");
});

test('weightDtype reaches the loaded model: "f16" halves the projections, embedding and classifier Load reports', async () => {
  const half = await startGpuNode({ weightDtype: "f16" });
  const auto = await startGpuNode();
  const req = { modelPath: MODEL, layerStart: 0, layerEnd: ckpt.shape.nLayers, embed: true, head: true };
  const [h, f] = await Promise.all([half.client.load(req), auto.client.load(req)]);
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize } = ckpt.shape;
  const matrices = nLayers * (2 * dim * nHeads * headDim + 2 * dim * nKvHeads * headDim + 3 * dim * hiddenDim);
  assert.equal(f.weightBytes, BigInt(4 * parameterCount(ckpt.shape, false)));
  assert.equal(f.weightBytes - h.weightBytes, BigInt(2 * (matrices + 2 * vocabSize * dim)));
});

test("drain() ends open Forward streams with OK after their current step; close() is idempotent", async () => {
  const att = await startAttention();
  closers.push(() => att.close());
  const node = createGpuNode({ intraOpThreads: 1 });
  await node.start();
  const client = createClient(GpuNode, node.address);
  await client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 5, embed: true, head: true });
  const call = client.forward();
  const statuses: number[] = [];
  call.on("status", (s: { code: number }) => statuses.push(s.code));
  const responses: ForwardResponse[] = [];
  call.on("error", () => undefined);
  const ended = new Promise<void>((resolve) => call.on("status", () => resolve()));
  // One step first, so that the server is holding the stream when it drains.
  await new Promise<void>((resolve) => {
    call.on("data", (r: ForwardResponse) => {
      responses.push(r);
      resolve();
    });
    call.write({
      stepId: 1n,
      sequences: [{ seqId: "d", startPos: 0, nTokens: 1, attentionAddress: att.address }],
      tokens: [1],
    });
  });
  assert.equal(responses[0]!.error, undefined);
  await node.drain();
  assert.equal(node.state, "draining");
  await node.close();
  await node.close();
  assert.equal(node.state, "closed");
  await ended;
  assert.deepEqual(statuses, [Code.OK]);
  client.close();
});
