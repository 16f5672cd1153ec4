/**
 * Downstreams (a gpu-node's Forward streams to the next pipeline stages)
 * against GpuNode servers written here: replies are paired with requests in
 * order and the hidden tensor arrives as sent; a stage that does not answer
 * in time, goes away or cannot be reached fails the pending step with a
 * DownstreamError naming it, and the next step opens a fresh stream; close()
 * half-closes the streams, so the stage ends them with OK.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import { createServer } from "node:net";
import { startGrpcServer, type GrpcServer } from "@tessera/rpc";
import {
  Code,
  DType,
  GpuNode,
  RpcError,
  addService,
  type ForwardRequest,
  type ForwardResponseSchema,
  type MessageInitShape,
  type ServerDuplexStream,
} from "@tessera/proto";
import { DownstreamError, Downstreams } from "../src/downstream.js";

/** What a test stage does with each request: answer (return) or not (undefined). */
type Answer = (req: ForwardRequest) => MessageInitShape<typeof ForwardResponseSchema> | undefined;

interface TestStage {
  server: GrpcServer;
  address: string;
  received: ForwardRequest[];
  /** Forward streams opened. */
  streams: number;
  /** Forward streams the client half-closed. */
  ended: number;
  /** Emits "stream" when a Forward stream opens, "end" when the client half-closes one. */
  events: EventEmitter;
}

/** Generous bound on waiting for a stage's event (a loaded 2-core machine). */
const EVENT_WAIT_MS = 30_000;

async function startStage(t: { after(fn: () => unknown): void }, answer: Answer): Promise<TestStage> {
  const stage = { received: [] as ForwardRequest[], streams: 0, ended: 0, events: new EventEmitter() } as TestStage;
  stage.server = await startGrpcServer("127.0.0.1", 0, ["tessera.v1.GpuNode"], (s) =>
    addService(s, GpuNode, {
      load: async () => ({}),
      info: async () => ({}),
      release: async () => ({}),
      forward: (call: ServerDuplexStream<ForwardRequest, MessageInitShape<typeof ForwardResponseSchema>>) =>
        new Promise<void>((resolve) => {
          stage.streams++;
          stage.events.emit("stream");
          call.on("data", (req: ForwardRequest) => {
            stage.received.push(req);
            const res = answer(req);
            if (res) call.write(res);
          });
          call.on("end", () => {
            stage.ended++;
            stage.events.emit("end");
            resolve();
          });
          call.on("cancelled", () => resolve());
        }),
    }),
  );
  stage.address = stage.server.address;
  t.after(() => stage.server.shutdown(0));
  return stage;
}

/** A loopback port nothing listens on (bound, then released). */
async function deadAddress(): Promise<string> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return `127.0.0.1:${port}`;
}

const rejection = (p: Promise<unknown>) =>
  p.then(
    () => assert.fail("the step was answered"),
    (e: unknown) => e,
  );

test("steps are paired with their replies in order; hidden bytes and next_stages arrive as sent", async (t) => {
  const stage = await startStage(t, (req) => ({
    stepId: req.stepId,
    logits: {
      dtype: DType.DTYPE_F32,
      shape: [1, 1],
      data: new Uint8Array(new Float32Array([Number(req.stepId)]).buffer),
    },
  }));
  const down = new Downstreams(60_000);
  t.after(() => down.close());
  const hidden = {
    dtype: DType.DTYPE_F16,
    shape: [2, 3],
    data: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
  };
  const replies = await Promise.all(
    [1n, 2n, 3n].map((stepId) =>
      down.forward(stage.address, {
        stepId,
        sequences: [{ seqId: "s", startPos: 0, nTokens: 2, attentionAddress: "a:1" }],
        hidden,
        nextStages: ["x:1"],
      }),
    ),
  );
  assert.deepEqual(
    replies.map((r) => [r.stepId, Buffer.from(r.logits!.data).readFloatLE(0)]),
    [
      [1n, 1],
      [2n, 2],
      [3n, 3],
    ],
  );
  const got = stage.received[1]!;
  assert.equal(got.hidden!.dtype, DType.DTYPE_F16);
  assert.deepEqual(got.hidden!.shape, [2, 3]);
  assert.deepEqual([...got.hidden!.data], [...hidden.data]);
  assert.deepEqual(got.nextStages, ["x:1"]);
  assert.equal(got.sequences[0]!.seqId, "s");
  assert.equal(down.size, 1);
});

test("a stage that does not answer within the timeout fails the step DEADLINE_EXCEEDED naming it; the next step opens a new stream", async (t) => {
  let answer = false;
  const stage = await startStage(t, (req) => (answer ? { stepId: req.stepId } : undefined));
  const down = new Downstreams(200);
  t.after(() => down.close());
  const err = await rejection(down.forward(stage.address, { stepId: 1n }));
  assert.ok(err instanceof DownstreamError, String(err));
  assert.equal(err.code, Code.DEADLINE_EXCEEDED);
  assert.equal(err.address, stage.address);
  assert.equal(err.message, `gpu-node ${stage.address}: no Forward response to step 1 within 200 ms`);
  assert.equal(down.size, 0);
  answer = true;
  // The next step opens a new stream. Whether it is answered within 200 ms
  // depends on the machine's load, so only the new stream is asserted here.
  const reopened = once(stage.events, "stream", { signal: AbortSignal.timeout(EVENT_WAIT_MS) });
  const retry = down.forward(stage.address, { stepId: 2n }).catch((e: unknown) => e);
  await reopened;
  await retry;
  assert.equal(stage.streams, 2);
  // A retry with a generous timeout is answered: the stage itself is fine.
  const patient = new Downstreams(60_000);
  t.after(() => patient.close());
  const res = await patient.forward(stage.address, { stepId: 3n });
  assert.equal(res.stepId, 3n);
});

test("a stage that goes away (forced shutdown) fails the pending step UNAVAILABLE, unreachable, naming it", async (t) => {
  let arrived!: () => void;
  const received = new Promise<void>((r) => (arrived = r));
  const stage = await startStage(t, () => {
    arrived();
    return undefined;
  });
  const down = new Downstreams(60_000);
  t.after(() => down.close());
  const pending = rejection(down.forward(stage.address, { stepId: 5n }));
  await received;
  stage.server.server.forceShutdown();
  const err = await pending;
  assert.ok(err instanceof DownstreamError, String(err));
  assert.equal(err.code, Code.UNAVAILABLE);
  assert.equal(err.address, stage.address);
  assert.match(err.message, new RegExp(`^gpu-node at ${stage.address} is unreachable: `));
  assert.equal(down.size, 0);
});

test("a stage nothing listens on fails the step UNAVAILABLE naming its address", async (t) => {
  const dead = await deadAddress();
  const down = new Downstreams(60_000);
  t.after(() => down.close());
  const err = await rejection(down.forward(dead, { stepId: 1n }));
  assert.ok(err instanceof DownstreamError, String(err));
  assert.equal(err.code, Code.UNAVAILABLE);
  assert.equal(err.address, dead);
  assert.match(err.message, new RegExp(`^gpu-node at ${dead} is unreachable: `));
});

test("close() fails pending steps UNAVAILABLE and half-closes the streams, which the stage ends", async (t) => {
  let arrived!: () => void;
  const received = new Promise<void>((r) => (arrived = r));
  const stage = await startStage(t, () => {
    arrived();
    return undefined;
  });
  const down = new Downstreams(60_000);
  const pending = rejection(down.forward(stage.address, { stepId: 1n }));
  await received;
  const ended = once(stage.events, "end", { signal: AbortSignal.timeout(EVENT_WAIT_MS) });
  down.close();
  const err = await pending;
  assert.ok(err instanceof RpcError && !(err instanceof DownstreamError), String(err));
  assert.equal(err.code, Code.UNAVAILABLE);
  assert.equal(down.size, 0);
  await ended;
  assert.equal(stage.ended, 1);
  const after = await rejection(down.forward(stage.address, { stepId: 2n }));
  assert.equal(RpcError.from(after).code, Code.UNAVAILABLE);
});
