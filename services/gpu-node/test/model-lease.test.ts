/**
 * The gpu-node's model lease over real gRPC, with two clients acting as two
 * coordinators on different models: the second one's Load is refused
 * (LEASED, naming the node, the model and its holder) while the first's
 * lease is live; a step naming another model or range than the node holds
 * fails MODEL_MISMATCH (also on a later pipeline stage), never answering
 * with the other model's logits; a Release by the only holder lets the
 * next in at once; and the node stops work its caller
 * abandoned: a Load cancelled mid-way stops building layers, a Forward
 * stream cancelled mid-step stops calling its attention node.
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { f32Tensor, tensorF32 } from "@tessera/core";
import { readCheckpointHeader, synthesizeWeights, writeCheckpoint } from "@tessera/model";
import { startGrpcServer } from "@tessera/rpc";
import {
  Attention,
  Code,
  GpuNode,
  NodeErrorReason,
  RpcError,
  addService,
  createClient,
  type AttendRequest,
  type Client,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { tempDir } from "@tessera/testing";
import { createGpuNode, type GpuNode as GpuNodeService, type GpuNodeOptions } from "../src/index.js";

const MODEL = fileURLToPath(new URL("../../../../shared/models/stories260K.bin", import.meta.url));
/** Layers of the deep model whose Load and steps are cancelled mid-way. */
const DEEP_LAYERS = 400;

let dir: Awaited<ReturnType<typeof tempDir>>;
/** Another model with the bundled shape (other weights). */
let other: string;
/** A tiny model with many layers: its Load and steps take long enough to cancel. */
let deep: string;
const closers: (() => Promise<void> | void)[] = [];

before(async () => {
  dir = await tempDir();
  const shape = (await readCheckpointHeader(MODEL)).shape;
  other = join(dir.path, "other.bin");
  await writeCheckpoint(other, shape, synthesizeWeights(shape, 11));
  const deepShape = { ...shape, dim: 16, hiddenDim: 32, nHeads: 2, nKvHeads: 2, headDim: 8, nLayers: DEEP_LAYERS };
  deep = join(dir.path, "deep.bin");
  await writeCheckpoint(deep, deepShape, synthesizeWeights(deepShape, 5));
});

after(async () => {
  for (const c of closers.reverse()) await c();
  await dir.remove();
});

async function startNode(
  options: GpuNodeOptions = {},
): Promise<{ node: GpuNodeService; client: Client<typeof GpuNode>; log: string[] }> {
  const log: string[] = [];
  const node = createGpuNode({ intraOpThreads: 1, wireDtype: "f32", log: (l) => log.push(l), ...options });
  await node.start();
  const client = createClient(GpuNode, node.address);
  closers.push(async () => {
    client.close();
    await node.close();
  });
  return { node, client, log };
}

/** One step on a new Forward stream, which is then ended. */
async function step(client: Client<typeof GpuNode>, req: MessageInitShape<typeof ForwardRequestSchema>) {
  const call = client.forward();
  try {
    return await new Promise<ForwardResponse>((resolve, reject) => {
      call.once("data", resolve);
      call.once("error", reject);
      call.write(req);
    });
  } finally {
    call.end();
  }
}

/** A step of one token through an embed + head stage (no layers: no attention node needed). */
const tokenStep = (model?: { modelId: string; layerStart: number; layerEnd: number }) => ({
  stepId: 1n,
  sequences: [{ seqId: "s", startPos: 0, nTokens: 1, attentionAddress: "127.0.0.1:1" }],
  tokens: [1],
  ...(model ? { model } : {}),
});

/** Embed and head only: a Load that needs no attention node to run steps. */
const headOnly = (modelPath: string, holder: string) => ({
  modelPath,
  layerStart: 0,
  layerEnd: 0,
  embed: true,
  head: true,
  holder,
});

test("a second coordinator's Load of another model is refused LEASED while the first's lease is live, until released", async () => {
  const { node, client } = await startNode({ leaseTtlMs: 60_000 });
  const a = await client.load(headOnly(MODEL, "coord-a"));
  assert.match(a.modelId, /^[0-9a-f]{16}$/);
  await assert.rejects(client.load(headOnly(other, "coord-b")), (err: unknown) => {
    assert.ok(err instanceof RpcError);
    assert.equal(err.code, Code.FAILED_PRECONDITION);
    assert.equal(err.reason, NodeErrorReason.LEASED);
    assert.equal(
      err.message,
      `gpu-node ${node.address} holds model ${a.modelId} layers [0, 0) for coordinator "coord-a" (lease live: ` +
        `a Load or step ran less than 60000 ms ago); coordinator "coord-b" may load another model once it lapses`,
    );
    return true;
  });
  // Nothing changed: the first coordinator's model is still the one loaded.
  const info = await client.info({});
  assert.deepEqual([info.modelPath, info.modelId, info.leaseHolders], [MODEL, a.modelId, ["coord-a"]]);
  // The same model and range is shared; its holder may load another one (it is not alone now: refused).
  const b = await client.load(headOnly(MODEL, "coord-b"));
  assert.equal(b.modelId, a.modelId);
  assert.deepEqual((await client.info({})).leaseHolders, ["coord-a", "coord-b"]);
  await assert.rejects(client.load(headOnly(other, "coord-a")), { code: Code.FAILED_PRECONDITION });
  // A sole holder may swap its own model at once.
  const { client: solo } = await startNode({ leaseTtlMs: 60_000 });
  await solo.load(headOnly(MODEL, "coord-a"));
  const swapped = await solo.load(headOnly(other, "coord-a"));
  assert.notEqual(swapped.modelId, a.modelId);
  assert.equal((await solo.info({})).modelPath, other);
  // Released by its only holder, the lease lets anyone in at once (the model stays loaded until then).
  await assert.rejects(solo.load(headOnly(MODEL, "coord-b")), { code: Code.FAILED_PRECONDITION });
  await solo.release({ holder: "coord-a" });
  assert.equal((await solo.info({})).modelPath, other);
  await solo.load(headOnly(MODEL, "coord-b"));
  assert.deepEqual((await solo.info({})).leaseHolders, ["coord-b"]);
});

test("a step planned for another model or range fails MODEL_MISMATCH naming both; a lapsed lease gives no wrong logits", async () => {
  const { node, client } = await startNode({ leaseTtlMs: 300 });
  const a = await client.load(headOnly(MODEL, "coord-a"));
  const mine = { modelId: a.modelId, layerStart: 0, layerEnd: 0 };
  const ok = await step(client, tokenStep(mine));
  assert.equal(ok.error, undefined);
  const logitsA = tensorF32(ok.logits, "logits");
  // The other coordinator's lease lapses after 300 ms without Loads or steps; then its Load goes through.
  await new Promise((r) => setTimeout(r, 400));
  const b = await client.load(headOnly(other, "coord-b"));
  assert.notEqual(b.modelId, a.modelId);
  // coord-a's next step names its model: a named error, not coord-b's model's logits.
  const res = await step(client, tokenStep(mine));
  assert.equal(res.logits, undefined);
  assert.equal(res.error?.code, Code.FAILED_PRECONDITION);
  assert.equal(res.error?.reason, NodeErrorReason.MODEL_MISMATCH);
  assert.equal(res.error?.address, node.address);
  assert.equal(
    res.error?.message,
    `gpu-node ${node.address} holds model ${b.modelId} layers [0, 0) (loaded for coordinator "coord-b"), ` +
      `but step 1 was planned for model ${a.modelId} layers [0, 0)`,
  );
  // The right model id but another range is a mismatch too.
  const range = await step(client, tokenStep({ modelId: b.modelId, layerStart: 0, layerEnd: 2 }));
  assert.equal(range.error?.reason, NodeErrorReason.MODEL_MISMATCH);
  // coord-b's own steps run on its model (other logits than coord-a's).
  const bs = await step(client, tokenStep({ modelId: b.modelId, layerStart: 0, layerEnd: 0 }));
  assert.equal(bs.error, undefined);
  assert.notDeepEqual(tensorF32(bs.logits, "logits"), logitsA);
});

test("a later pipeline stage checks next_stage_models: a mismatch there is named with that stage's address", async () => {
  const first = await startNode();
  const second = await startNode();
  const s1 = await first.client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 0, embed: true, holder: "c" });
  await second.client.load({ modelPath: MODEL, layerStart: 0, layerEnd: 0, head: true, holder: "c" });
  const req = {
    ...tokenStep({ modelId: s1.modelId, layerStart: 0, layerEnd: 0 }),
    nextStages: [second.node.address],
    nextStageModels: [{ modelId: "0123456789abcdef", layerStart: 0, layerEnd: 0 }],
  };
  const res = await step(first.client, req);
  assert.equal(res.error?.reason, NodeErrorReason.MODEL_MISMATCH);
  assert.equal(res.error?.address, second.node.address);
  assert.match(res.error!.message, /but step 1 was planned for model 0123456789abcdef layers \[0, 0\)$/);
  const uneven = await step(first.client, { ...req, nextStageModels: [] });
  assert.equal(uneven.error, undefined, "no next_stage_models: the later stage is not checked");
  const bad = await step(first.client, { ...req, nextStageModels: [req.nextStageModels[0]!, req.nextStageModels[0]!] });
  assert.equal(bad.error?.code, Code.INVALID_ARGUMENT);
  assert.match(bad.error!.message, /next_stage_models has 2 entries for 1 next_stages/);
});

test("a Load its caller abandons (deadline passed) stops building layers and loads nothing", async () => {
  const { client, log } = await startNode();
  await assert.rejects(client.load({ ...headOnly(deep, "c"), layerEnd: DEEP_LAYERS }, { deadline: 300 }), {
    code: Code.DEADLINE_EXCEEDED,
  });
  // The node either logs that it stopped, or (before the fix) finishes the Load.
  for (;;) {
    if (log.some((l) => l.includes("Load of"))) break;
    if ((await client.info({})).modelPath !== "") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const line = log.find((l) => l.includes("Load of"));
  assert.ok(line, "the node logged that it stopped the Load");
  const m = new RegExp(
    `: Load of ${deep} stopped: load cancelled by its caller after (\\d+) of ${DEEP_LAYERS} layers$`,
  ).exec(line);
  assert.ok(m, line);
  assert.ok(Number(m[1]) < DEEP_LAYERS);
  assert.equal((await client.info({})).modelPath, "");
  // The node is free for the next Load, by anyone.
  assert.match((await client.load(headOnly(MODEL, "other"))).modelId, /^[0-9a-f]{16}$/);
});

test("a Forward stream cancelled mid-step stops calling its attention node", async () => {
  let attends = 0;
  const server = await startGrpcServer("127.0.0.1", 0, ["tessera.v1.Attention"], (s) =>
    addService(s, Attention, {
      openSequence: async () => ({ length: 0, reservedBytes: 0n }),
      closeSequence: async () => ({}),
      info: async () => ({ role: "memory", sequences: 0 }),
      attend: async (call) => {
        for await (const req of call as AsyncIterable<AttendRequest>) {
          attends++;
          await new Promise((r) => setTimeout(r, 10));
          const rows = req.items.reduce((a, it) => a + it.nTokens, 0);
          call.write({ stepId: req.stepId, layer: req.layer, o: f32Tensor(new Float32Array(rows * 16), [rows, 16]) });
        }
      },
    }),
  );
  closers.push(() => server.shutdown(0));
  const { client, log } = await startNode();
  const loaded = await client.load({ ...headOnly(deep, "c"), layerEnd: DEEP_LAYERS });
  const call = client.forward();
  call.on("error", () => undefined);
  call.write({
    ...tokenStep({ modelId: loaded.modelId, layerStart: 0, layerEnd: DEEP_LAYERS }),
    sequences: [{ seqId: "s", startPos: 0, nTokens: 1, attentionAddress: server.address }],
  });
  while (attends < 3) await new Promise((r) => setTimeout(r, 5));
  call.cancel();
  // Stopped (logged) before the step's last layer; no Attend is sent after.
  for (;;) {
    if (log.some((l) => l.includes("stopped before layer")) || attends >= DEEP_LAYERS) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const line = log.find((l) => l.includes("stopped before layer"));
  assert.ok(line, `the node logged that it stopped the step (${attends} Attend calls)`);
  assert.match(line, /: step 1 stopped before layer \d+ of \[0, 400\): its caller cancelled the Forward stream$/);
  const seen = attends;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(attends, seen);
  assert.ok(seen < DEEP_LAYERS);
});
