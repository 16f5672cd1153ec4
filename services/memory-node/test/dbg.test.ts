import { test } from "node:test";
import { Attention, createClient, tensorF32 as _x } from "@tessera/proto";
import { createMemoryNode } from "@tessera/memory-node";
import { tensorF32 } from "@tessera/core";
import { KvHistory, openAttend, random } from "./attention-harness.js";
test("dbg", async () => {
  const layout = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 2 };
  const node = createMemoryNode({}); await node.start();
  const client = createClient(Attention, node.address);
  await client.openSequence({ seqId: "a", layout, maxPositions: 4 });
  const h = new KvHistory(layout, 4, random(1));
  const s = h.step(0, [{ seqId: "a", startPos: 0, nTokens: 1 }]);
  const st = openAttend(client);
  const r = await st.attend(s.request);
  console.log(s.request, s.expected, r.o, r.o && tensorF32(r.o));
  await st.end(); client.close(); await node.close();
});
