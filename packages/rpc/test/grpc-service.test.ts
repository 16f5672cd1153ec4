/**
 * createRequestLoops over real gRPC: a stopped loop answers the request in
 * flight, handles nothing after it, and ends the call with OK; calls that
 * arrive after stop() end at once.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequestLoops, startGrpcServer } from "../src/index.js";
import { Attention, Code, addService, createClient, type AttendRequest, type AttendResponse } from "@tessera/proto";

/** An Attention server whose Attend is served by `loops`, answering each request when `gate` lets it. */
async function startServer(loops: ReturnType<typeof createRequestLoops>, gate: (req: AttendRequest) => Promise<void>) {
  const handled: bigint[] = [];
  const server = await startGrpcServer("127.0.0.1", 0, ["tessera.v1.Attention"], (s) =>
    addService(s, Attention, {
      openSequence: async () => ({}),
      closeSequence: async () => ({}),
      info: async () => ({}),
      attend: (call) =>
        loops.serve(call, async (req) => {
          handled.push(req.stepId);
          await gate(req);
          return { stepId: req.stepId, layer: req.layer };
        }),
    }),
  );
  return { server, handled };
}

function openCall(client: ReturnType<typeof createClient<typeof Attention>>) {
  const call = client.attend();
  const responses: bigint[] = [];
  call.on("data", (r: AttendResponse) => responses.push(r.stepId));
  const status = new Promise<number>((resolve) => call.on("status", (s: { code: number }) => resolve(s.code)));
  return { call, responses, status };
}

test("stop() lets the request in flight finish, handles no later request, and ends the call with OK", async (t) => {
  const loops = createRequestLoops();
  let entered!: () => void;
  const inFlight = new Promise<void>((resolve) => (entered = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const { server, handled } = await startServer(loops, (req) => {
    if (req.stepId !== 1n) return Promise.resolve();
    entered();
    return released;
  });
  t.after(() => server.shutdown(0));
  const client = createClient(Attention, server.address);
  t.after(() => client.close());

  const first = openCall(client);
  first.call.write({ stepId: 1n, layer: 0 });
  first.call.write({ stepId: 2n, layer: 0 });
  await inFlight;
  assert.equal(loops.size, 1);
  const stopped = loops.stop();
  release();
  await stopped;
  assert.equal(loops.size, 0);
  // The client never half-closed: the loop ended the call itself.
  assert.equal(await first.status, Code.OK);
  assert.deepEqual(first.responses, [1n]);
  assert.deepEqual(handled, [1n]);

  // A call after stop() ends at once, its requests unread.
  const late = openCall(client);
  late.call.write({ stepId: 3n, layer: 0 });
  assert.equal(await late.status, Code.OK);
  assert.deepEqual(late.responses, []);
  assert.deepEqual(handled, [1n]);
  await loops.stop(); // idempotent
});

test("stop(graceMs) gives up waiting for a request that does not finish; the loop still ends after it", async (t) => {
  const loops = createRequestLoops();
  let entered!: () => void;
  const inFlight = new Promise<void>((resolve) => (entered = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const { server } = await startServer(loops, () => {
    entered();
    return released;
  });
  t.after(() => server.shutdown(0));
  const client = createClient(Attention, server.address);
  t.after(() => client.close());

  const c = openCall(client);
  c.call.write({ stepId: 1n, layer: 0 });
  await inFlight;
  await loops.stop(1);
  assert.equal(loops.size, 1);
  release();
  assert.equal(await c.status, Code.OK);
  assert.deepEqual(c.responses, [1n]);
  assert.equal(loops.size, 0);
});
