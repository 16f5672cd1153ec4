// The attention-kernel registry as both attention nodes use it: a kernel
// registered under a new name is picked by the nodes' `attentionKernel`
// option (the CLI's --attention-kernel) and measured by their profiles; an
// unknown name is refused naming the option and the known names. And the
// NodeError.reason of the Attend errors both nodes send.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import {
  attentionKernel,
  attentionKernelNames,
  jsKernel,
  registerAttentionKernel,
  wasmKernel,
  type AttentionKernel,
} from "@tessera/attention";
import { createMemoryNode, compileMemoryNodeOptions, profileMemoryNode } from "@tessera/memory-node";
import { createStorageNode, compileStorageNodeOptions } from "@tessera/storage-node";
import { Attention, Code, NodeErrorReason, createClient, type Client } from "@tessera/proto";
import { KvHistory, assertOutput, openAttend, random, tempDir, type Layout } from "@tessera/testing";

const layout: Layout = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8 };

/** Calls of each method of a kernel, by method name. */
type Calls = Record<"attendKvCache" | "createHeapAttention" | "createOnlineAttention", number>;

/** A kernel named `name` that counts its calls and delegates to `base`. */
function countingKernel(name: string, base: AttentionKernel): { kernel: AttentionKernel; calls: Calls } {
  const calls: Calls = { attendKvCache: 0, createHeapAttention: 0, createOnlineAttention: 0 };
  const kernel: AttentionKernel = {
    name,
    summary: `${base.name}, counting its calls (test)`,
    readsHeap: (dims) => base.readsHeap(dims),
    attendKvCache(...args) {
      calls.attendKvCache++;
      base.attendKvCache(...args);
    },
    createHeapAttention(...args) {
      calls.createHeapAttention++;
      return base.createHeapAttention(...args);
    },
    createOnlineAttention(...args) {
      calls.createOnlineAttention++;
      return base.createOnlineAttention(...args);
    },
  };
  return { kernel, calls };
}

const viaWasm = countingKernel("test-wasm", wasmKernel);
const viaJs = countingKernel("test-js", jsKernel);
registerAttentionKernel(viaWasm.kernel);
registerAttentionKernel(viaJs.kernel);

/** Opens sequence "a" (24 positions), prefills 5 tokens and decodes 2, checking every output against naive attention. */
async function prefillAndDecode(t: TestContext, client: Client<typeof Attention>): Promise<void> {
  await client.openSequence({ seqId: "a", layout, maxPositions: 24 });
  const history = new KvHistory(layout, 24, random(7));
  const stream = openAttend(client);
  t.after(() => stream.end());
  for (const [startPos, nTokens] of [
    [0, 5],
    [5, 1],
    [6, 1],
  ] as const) {
    for (let layer = 0; layer < layout.nLayers; layer++) {
      const s = history.step(layer, [{ seqId: "a", startPos, nTokens }]);
      assertOutput(await stream.attend(s.request), s.expected, layout, 1e-5, `position ${startPos} layer ${layer}`);
    }
  }
}

const started = async (
  t: TestContext,
  node: ReturnType<typeof createMemoryNode> | ReturnType<typeof createStorageNode>,
) => {
  await node.start();
  t.after(() => node.close());
  const client = createClient(Attention, node.address);
  t.after(() => client.close());
  return client;
};

test("the registry lists the built-in kernels first, then registered ones; a name is taken once", () => {
  assert.deepEqual(attentionKernelNames(), ["wasm", "js", "test-wasm", "test-js"]);
  assert.equal(attentionKernel("test-js"), viaJs.kernel);
  assert.throws(
    () => registerAttentionKernel({ ...jsKernel }),
    /^RangeError: attention kernel "js" is already registered/,
  );
  assert.throws(
    () => attentionKernel("gpu"),
    /^RangeError: unknown attention kernel "gpu": must be "wasm", "js", "test-wasm" or "test-js"/,
  );
});

test("both nodes refuse an unknown kernel name, naming the option and the known kernels", () => {
  const known = /must be "wasm", "js", "test-wasm" or "test-js", got "gpu"/;
  assert.throws(() => compileMemoryNodeOptions({ attentionKernel: "gpu" }), /^ConfigError: attentionKernel: /);
  assert.throws(() => compileMemoryNodeOptions({ attentionKernel: "gpu" }), known);
  assert.throws(() => createMemoryNode({ attentionKernel: "gpu" }), known);
  assert.throws(
    () => compileStorageNodeOptions({ dataDir: "d", attentionKernel: "gpu" }),
    /^ConfigError: attentionKernel: /,
  );
  assert.throws(() => createStorageNode({ dataDir: "d", attentionKernel: "gpu" }), known);
  assert.equal(compileMemoryNodeOptions().attentionKernel, "wasm");
  assert.equal(compileStorageNodeOptions({ dataDir: "d" }).attentionKernel, "wasm");
});

test("a memory-node runs the kernel its attentionKernel option names: in a heap, or on plain arrays", async (t) => {
  for (const { kernel, calls } of [viaWasm, viaJs]) {
    const before = { ...calls };
    const node = createMemoryNode({ port: 0, attentionKernel: kernel.name, attentionThreads: 1 });
    assert.equal(node.options.attentionKernel, kernel.name);
    await prefillAndDecode(t, await started(t, node));
    if (kernel === viaWasm.kernel) assert.ok(calls.createHeapAttention > before.createHeapAttention, "heap attention");
    else assert.equal(calls.attendKvCache - before.attendKvCache, 2 * 3, "one call per layer and request");
  }
});

test("a storage-node streams through the kernel its attentionKernel option names", async (t) => {
  for (const { kernel, calls } of [viaWasm, viaJs]) {
    const before = calls.createOnlineAttention;
    const dir = await tempDir();
    t.after(() => dir.remove());
    const node = createStorageNode({ port: 0, dataDir: dir.path, fsync: "never", attentionKernel: kernel.name });
    await prefillAndDecode(t, await started(t, node));
    assert.equal(calls.createOnlineAttention - before, 1, "one accumulator for the one layer shape");
  }
});

test("the memory-node's profile measures the chosen kernel", async () => {
  const before = viaWasm.calls.createHeapAttention;
  const p = await profileMemoryNode({ attentionThreads: 1, attentionKernel: "test-wasm", readBytesPerSecond: 1 });
  assert.ok(viaWasm.calls.createHeapAttention > before);
  assert.equal(p.figures.case, "memory");
});

test("Attend errors carry a NodeError.reason on both nodes: KV_LOST, INVALID_REQUEST", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  for (const node of [
    createMemoryNode({ port: 0 }),
    createStorageNode({ port: 0, dataDir: dir.path, fsync: "never" }),
  ]) {
    const client = await started(t, node);
    await client.openSequence({ seqId: "a", layout, maxPositions: 4 });
    const history = new KvHistory(layout, 8, random(3));
    const stream = openAttend(client);
    t.after(() => stream.end());
    const errorOf = async (items: { seqId: string; startPos: number; nTokens: number }[]) => {
      const r = await stream.attend(history.step(0, items).request);
      return [r.error?.code, r.error?.reason];
    };
    // Unknown sequence, and positions the sequence does not hold yet: its KV cache is lost.
    assert.deepEqual(await errorOf([{ seqId: "zz", startPos: 0, nTokens: 1 }]), [
      Code.NOT_FOUND,
      NodeErrorReason.KV_LOST,
    ]);
    assert.deepEqual(await errorOf([{ seqId: "a", startPos: 2, nTokens: 1 }]), [
      Code.OUT_OF_RANGE,
      NodeErrorReason.KV_LOST,
    ]);
    // Past max_positions: the request is at fault.
    assert.deepEqual(await errorOf([{ seqId: "a", startPos: 0, nTokens: 6 }]), [
      Code.OUT_OF_RANGE,
      NodeErrorReason.INVALID_REQUEST,
    ]);
    // OpenSequence errors keep their gRPC codes.
    await assert.rejects(
      client.openSequence({ seqId: "big", layout, maxPositions: 2 ** 30 }),
      (err: { code: number }) => {
        assert.equal(err.code, Code.RESOURCE_EXHAUSTED);
        return true;
      },
    );
  }
});
