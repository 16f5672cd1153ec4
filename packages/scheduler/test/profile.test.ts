// Pins the machine profile → cost-model figures mapping (profile.ts) on a
// profile with round numbers; every expected value is computed by hand in
// the comments.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { ModelShape } from "@tessera/core";
import { MANIFEST_SYNCS, denseFigures, localNodeSpecs, predict, type MachineProfile } from "@tessera/scheduler";

const profile: MachineProfile = {
  cores: 2,
  dense: [
    // batch 1: 2·1·1000·1000 = 2e6 FLOP in 4 ms = 5e8 FLOP/s; 1000·1000·4 = 4e6 B in 4 ms = 1e9 B/s.
    { batch: 1, k: 1000, n: 1000, seconds: 0.004 },
    // batch 64: 2·64·1e6 = 1.28e8 FLOP in 50 ms = 2.56e9 FLOP/s; 4e6 B in 50 ms = 8e7 B/s.
    { batch: 64, k: 1000, n: 1000, seconds: 0.05 },
  ],
  denseWeightBytes: 4,
  denseLayerOverheadS: 0.0002,
  memoryReadBytesPerS: 10e9,
  attention: {
    kvBytesPerS: 4e9,
    flopsPerS: 6e9,
    threads: 2,
    kvBytesPerSOneThread: 3e9,
    flopsPerSOneThread: 4e9,
    kvElementBytes: 4,
    itemS: 0.0001,
  },
  disk: { readBytesPerS: 1e9, dropped: true, cachedReadBytesPerS: 5e9, syncS: 0.001 },
  rpc: { rttS: 0.0002, bytesPerS: 5e8 },
  memoryBytes: 16e9,
};

test("denseFigures takes the best FLOP/s and the best weight bytes/s over the samples", () => {
  assert.deepEqual(denseFigures(profile.dense, 4), { flops: 2.56e9, weightBytesPerS: 1e9 });
  // With 2-byte weights the bytes/s halve: 1000·1000·2 / 0.004 = 5e8.
  assert.equal(denseFigures(profile.dense, 2).weightBytesPerS, 5e8);
  assert.throws(() => denseFigures([], 4), /no dense samples/);
  assert.throws(() => denseFigures([{ batch: 1, k: 1, n: 1, seconds: 0 }], 4), /not positive/);
});

test("localNodeSpecs maps the profile to gpu-, memory- and storage-node figures", () => {
  const s = localNodeSpecs(profile);
  const link = { bandwidth: 5e8, sustainedFraction: 1, rttS: 0.0002 };
  assert.equal(s.gpu.flops, 2.56e9);
  assert.equal(s.gpu.memoryBandwidth, 1e9);
  assert.equal(s.gpu.flopsEfficiency, 1);
  assert.equal(s.gpu.bandwidthEfficiency, 1);
  // The layer's fixed cost as measured.
  assert.equal(s.gpu.layerOverheadS, 0.0002);
  assert.equal(s.gpu.memoryBytes, 16e9);
  assert.deepEqual(s.gpu.link, link);
  // memory-node: the kernel's all-thread KV and FLOP rates, a quarter of RAM.
  assert.equal(s.memory.readBandwidth, 4e9);
  assert.equal(s.memory.flops, 6e9);
  assert.equal(s.memory.capacityBytes, 4e9);
  assert.equal(s.memory.appendSyncS, undefined);
  assert.equal(s.memory.unitOverheadS, 0.0001);
  assert.deepEqual(s.memory.link, link);
  // storage-node from the page cache: min(5e9 cached read, 3e9 one-thread kernel) = 3e9; syncs 1 ms.
  assert.equal(s.storage.readBandwidth, 3e9);
  assert.equal(s.storage.flops, 4e9);
  assert.equal(s.storage.appendSyncS, 0.001);
  assert.equal(s.storage.unitOverheadS, 0.0001);
  // From the disk: min(1e9, 3e9) = 1e9.
  assert.equal(localNodeSpecs(profile, { storageMedium: "disk" }).storage.readBandwidth, 1e9);
});

// dim 1000, hidden 1000, 1 layer, 10 heads × head_dim 100, 10 KV heads, vocab 1000.
const shape: ModelShape = {
  dim: 1000,
  hiddenDim: 1000,
  nLayers: 1,
  nHeads: 10,
  nKvHeads: 10,
  vocabSize: 1000,
  seqLen: 4096,
  headDim: 100,
  ropeTheta: 10000,
  normEps: 1e-5,
};

test("a profile's figures give a hand-computed decode step on the local cluster", () => {
  const s = localNodeSpecs(profile);
  const b = 2;
  const p = predict(
    shape,
    { batch: b, promptTokens: 999, outputTokens: 2, weightBytes: 4, kvBytes: 4, wireBytes: 2 },
    {
      stages: [{ node: s.gpu, layerStart: 0, layerEnd: 1 }],
      kv: { mode: "nodes", headGroups: 1, shares: [{ node: s.storage, units: b }] },
      microBatches: 1,
    },
  );
  // Layer params: 2·1000·1000 + 2·1000·1000 + 3·1000·1000 + 2·1000 = 7.002e6.
  // Dense: max(2·2·7.002e6 / 2.56e9, 7.002e6·4 / 1e9) + 2e-4 = max(0.0109406, 0.028008) + 2e-4 = 0.028208.
  // Classifier: 1000·1000 + 1000 = 1.001e6 params: max(2·2·1.001e6/2.56e9, 4.004e6/1e9) = 0.004004.
  const dense = 0.028208 + 0.004004;
  assert.ok(Math.abs(p.perStage[0]!.denseS - dense) < 1e-12);
  // Attention at mean context 999 + 1 = 1000: FLOPs 4·2·10·100·1000 = 8e6 / 4e9 = 0.002 s, below
  // KV 2·1000·(2·1000·4) = 1.6e7 B / 3e9 = 0.0053333 s; plus
  // 2 units · 0.1 ms = 0.0055333 s, against 2 appends · 1 ms = 2 ms: 0.0055333; plus the manifest,
  // 2 units · 2 syncs · 1 ms = 4 ms.
  assert.equal(MANIFEST_SYNCS, 2);
  const attention = 1.6e7 / 3e9 + 0.0002 + 0.004;
  assert.ok(Math.abs(p.perAttentionNode[0]!.attentionS - attention) < 1e-12);
  // Transfer: send 2·(1000 + 2·1000)·2 = 12000 B, receive 2·1000·2 = 4000 B at 5e8 B/s = 3.2e-5 s,
  // plus the attention RTT 2e-4; logits 2·1000·4 = 8000 B / 5e8 = 1.6e-5 s plus RTT 2e-4.
  const rest = 3.2e-5 + 2e-4 + 1.6e-5 + 2e-4;
  assert.ok(Math.abs(p.decodeStepS - (dense + attention + rest)) < 1e-12);
});
