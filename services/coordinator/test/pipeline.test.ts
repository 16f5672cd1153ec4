/**
 * ForwardPipeline with stand-in channels: a step goes to the first stage
 * only, carrying the later stages' addresses, and a gpu-node's error comes
 * back naming the stage that failed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, ForwardResponseSchema, type ForwardResponse, type MessageInitShape } from "@tessera/proto";
import type { ForwardChannel } from "../src/forward-channel.js";
import { ForwardPipeline } from "../src/pipeline.js";

/** A channel that records its requests and answers `answer`. */
function channel(address: string, answer: MessageInitShape<typeof ForwardResponseSchema> = {}) {
  const sent: unknown[] = [];
  const c = {
    address,
    sent,
    step: (req: unknown): Promise<ForwardResponse> => {
      sent.push(req);
      return Promise.resolve(create(ForwardResponseSchema, answer));
    },
    close: () => undefined,
  };
  return c as typeof c & ForwardChannel;
}

test("a step goes to the first stage only, with the others' addresses as next_stages", async () => {
  const stages = [channel("a:1", { stepId: 3n }), channel("b:2"), channel("c:3")];
  const pipeline = new ForwardPipeline(stages);
  const res = await pipeline.step({ stepId: 3n, tokens: [1, 2] });
  assert.equal(res.stepId, 3n);
  assert.deepEqual(stages[0]!.sent, [{ stepId: 3n, tokens: [1, 2], nextStages: ["b:2", "c:3"] }]);
  assert.deepEqual([stages[1]!.sent.length, stages[2]!.sent.length], [0, 0]);
  assert.equal(pipeline.address, "a:1 -> b:2 -> c:3");
});

test("a gpu-node's error names the stage that failed; an attention node's is left as it is", async () => {
  const cases: [MessageInitShape<typeof ForwardResponseSchema>["error"], string][] = [
    [{ code: 9, message: "no model is loaded", role: "gpu", address: "c:3" }, "gpu-node c:3: no model is loaded"],
    [{ code: 13, message: "boom", role: "gpu", address: "" }, "gpu-node a:1: boom"],
    [
      { code: 14, message: "gpu-node at b:2 is unreachable: refused", role: "gpu", address: "b:2" },
      "gpu-node at b:2 is unreachable: refused",
    ],
    [{ code: 14, message: "gpu-node c:3 is draining", role: "gpu", address: "c:3" }, "gpu-node c:3 is draining"],
    [{ code: 14, message: "layer 2: gone", role: "attention", address: "m:9" }, "layer 2: gone"],
    // A message naming another node whose address extends this one's is not this one's name.
    [
      { code: 13, message: "gpu-node a:10 said no", role: "gpu", address: "a:1" },
      "gpu-node a:1: gpu-node a:10 said no",
    ],
    [
      { code: 14, message: "gpu-node at a:10 is unreachable", role: "gpu", address: "a:1" },
      "gpu-node a:1: gpu-node at a:10 is unreachable",
    ],
    [{ code: 13, message: "gpu-node a:1", role: "gpu", address: "a:1" }, "gpu-node a:1"],
  ];
  for (const [error, message] of cases) {
    const pipeline = new ForwardPipeline([channel("a:1", { stepId: 1n, error }), channel("b:2"), channel("c:3")]);
    const res = await pipeline.step({ stepId: 1n });
    assert.equal(res.error?.message, message);
    assert.equal(res.error?.address, error!.address);
  }
});
