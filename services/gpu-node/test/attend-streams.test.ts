/**
 * AttendStreams against an Attention server written here: a node that goes
 * away cancelling the stream (a forced shutdown) fails the pending request
 * UNAVAILABLE, which a coordinator retries, not CANCELLED, which it would
 * take for the caller's own cancellation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGrpcServer } from "@tessera/rpc";
import { Attention, Code, addService } from "@tessera/proto";
import { AttendStreams, AttentionNodeError } from "../src/attend-streams.js";

test("an Attend stream the node cancels (forced shutdown) fails its pending request UNAVAILABLE", async (t) => {
  let received!: () => void;
  const arrived = new Promise<void>((resolve) => (received = resolve));
  // Never answers: the request is pending when the node goes away.
  const server = await startGrpcServer("127.0.0.1", 0, ["tessera.v1.Attention"], (s) =>
    addService(s, Attention, {
      openSequence: async () => ({}),
      closeSequence: async () => ({}),
      info: async () => ({}),
      attend: (call) =>
        new Promise<void>((resolve) => {
          call.on("data", () => received());
          call.on("cancelled", () => resolve());
          call.on("end", () => resolve());
        }),
    }),
  );
  t.after(() => server.shutdown(0));
  const streams = new AttendStreams(60_000);
  t.after(() => streams.close());
  const pending = streams.attend(server.address, { stepId: 1n, layer: 0 });
  await arrived;
  server.server.forceShutdown();
  const err = await pending.then(
    () => assert.fail("the request was answered"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof AttentionNodeError, String(err));
  assert.equal(err.code, Code.UNAVAILABLE);
  assert.equal(err.address, server.address);
  assert.equal(
    err.message,
    `attention node ${server.address}: UNAVAILABLE: Attend stream cancelled by the node (Call cancelled)`,
  );
  assert.equal(streams.size, 0);
});
