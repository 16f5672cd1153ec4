/**
 * A node that stops answering between a job's start and the opening of
 * its sequences' KV caches (killed, restarting) does not fail those
 * sequences: they are placed again after a backoff, and a memory-node that
 * keeps failing for --failover ms is marked down, so they land on another
 * node and finish with an undisturbed run's tokens. The failing node here
 * is a real gRPC server whose Info answers (so the job-start survey keeps
 * it) and whose OpenSequence answers UNAVAILABLE, as a node going down
 * right then would.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Attention, Code, RpcError, addService } from "@tessera/proto";
import { startGrpcServer } from "@tessera/rpc";
import { generate, startInProcessCluster, STORY_OPENINGS } from "@tessera/testing";

test("sequences whose node fails OpenSequence are placed again and finish with undisturbed tokens", async (t) => {
  let opens = 0;
  const down = () => new RpcError(Code.UNAVAILABLE, "connection refused (going down)");
  const failing = await startGrpcServer("127.0.0.1", 0, ["tessera.v1.Attention"], (server) =>
    addService(server, Attention, {
      info: async () => ({ role: "memory", capacityBytes: 1n << 30n }),
      openSequence: async () => {
        opens++;
        throw down();
      },
      closeSequence: async () => ({}),
      attend: async () => {
        throw down();
      },
    }),
  );
  t.after(() => failing.shutdown(0));
  const logs: string[] = [];
  const cluster = await startInProcessCluster(t, {
    gpu: { wireDtype: "f32" },
    coordinator: (nodes) => ({
      memoryNodes: [...nodes.memories.map((m) => m.address), failing.address],
      failoverMs: 300,
      kvPlacement: "cheapest-first",
      log: (line) => logs.push(line),
    }),
  });
  const prompts = STORY_OPENINGS.slice(0, 8).map((prompt, i) => ({ id: `p${i}`, prompt }));
  const request = { prompts, sampling: { maxTokens: 24 } };

  const got = await generate(cluster.address, request);
  assert.ok(opens > 0, "some sequences were placed on the failing node");
  assert.ok(
    logs.some((l) => l.includes(`memory-node ${failing.address}`) && l.includes("down")),
    `the failing node is marked down:\n${logs.join("\n")}`,
  );
  // Undisturbed: the same prompts with the failing node gone.
  cluster.coordinator.membership.remove(failing.address);
  const want = await generate(cluster.address, request);
  for (const p of prompts) {
    const g = got.results.get(p.id)!;
    assert.equal(g.error, "", `${p.id}: ${g.error}`);
    assert.deepEqual(g.completionTokenIds, want.results.get(p.id)!.completionTokenIds, p.id);
  }
});
