// Pins the machine profile → cost-model figures mapping (profile.ts) on a
// profile with round numbers; every expected value is computed by hand in
// the comments.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { ModelShape } from "@tessera/core";
import {
  MANIFEST_SYNCS,
  denseFigures,
  fitAttendProbe,
  localNodeSpecs,
  predict,
  type AttendProbe,
  type MachineProfile,
} from "@tessera/scheduler";

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
  // The layer's fixed cost as measured; the dense curve: 4e6 B / 4 ms = 1e9 B/s at batch 1, / 50 ms = 8e7 at 64.
  assert.equal(s.gpu.layerOverheadS, 0.0002);
  assert.deepEqual(s.gpu.denseCurve, [
    { batch: 1, weightBytesPerS: 1e9 },
    { batch: 64, weightBytesPerS: 8e7 },
  ]);
  assert.equal(s.gpu.sampleLogitS, 0);
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
  // Its double buffer: halves of 64 MiB / 2, filled at max(5e9 page cache, 3e9 kernel) = 5e9 B/s.
  assert.deepEqual(s.storage.readBuffer, { chunkBytes: 32 * 2 ** 20, fillBytesPerS: 5e9 });
  assert.equal(s.memory.readBuffer, undefined);
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
  // Dense from the measured curve at batch 2: τ(2) = 1/1e9 + (1/8e7 − 1/1e9)·(2 − 1)/(64 − 1)
  // = 1e-9 + 1.15e-8/63 s per weight byte; 7.002e6·4 B · τ(2) + 2e-4.
  // Classifier: 1000·1000 + 1000 = 1.001e6 params: 4.004e6 B · τ(2).
  const tau = 1e-9 + 1.15e-8 / 63;
  const dense = 7.002e6 * 4 * tau + 2e-4 + 4.004e6 * tau;
  assert.ok(Math.abs(p.perStage[0]!.denseS - dense) < 1e-12);
  // Attention at mean context 999 + 1 = 1000: FLOPs 4·2·10·100·1000 = 8e6 / 4e9 = 0.002 s, below
  // KV 2·1000·(2·1000·4) = 1.6e7 B / 3e9 = 0.0053333 s; plus
  // 2 units · 0.1 ms = 0.0055333 s, against 2 appends · 1 ms = 2 ms: 0.0055333; plus the manifest,
  // 2 units · 2 syncs · 1 ms = 4 ms; plus the read buffer's fill: min(32 MiB, 1.6e7 B) / 5e9 B/s = 3.2 ms.
  assert.equal(MANIFEST_SYNCS, 2);
  const attention = 1.6e7 / 3e9 + 0.0002 + 0.004 + 0.0032;
  assert.ok(Math.abs(p.perAttentionNode[0]!.attentionS - attention) < 1e-12);
  // Transfer: send 2·(1000 + 2·1000)·2 = 12000 B, receive 2·1000·2 = 4000 B at 5e8 B/s = 3.2e-5 s,
  // plus the attention RTT 2e-4; logits 2·1000·4 = 8000 B / 5e8 = 1.6e-5 s plus RTT 2e-4.
  const rest = 3.2e-5 + 2e-4 + 1.6e-5 + 2e-4;
  assert.ok(Math.abs(p.decodeStepS - (dense + attention + rest)) < 1e-12);
});

// An Attend probe whose lines are exact: compute 0.5 ms + 0.5 ms/item, wire (round trip − compute)
// 0.5 ms + 1.5 ms/item; one item is 5e5 B on the wire and reads 4e5 B of KV.
const probe: AttendProbe = {
  samples: [
    { items: 1, seconds: 0.003, computeSeconds: 0.001 },
    { items: 3, seconds: 0.007, computeSeconds: 0.002 },
    { items: 5, seconds: 0.011, computeSeconds: 0.003 },
  ],
  itemWireBytes: 5e5,
  itemKvBytes: 4e5,
};

test("fitAttendProbe: least-squares lines of compute and of round trip − compute over items", () => {
  const c = fitAttendProbe(probe);
  const near = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} != ${b}`);
  near(c.requestComputeS, 0.0005, "compute intercept");
  near(c.itemComputeS, 0.0005, "compute slope");
  near(c.requestWireS, 0.0005, "wire intercept");
  near(c.itemWireS, 0.0015, "wire slope");
  // Clamped at 0: a falling line.
  const down = fitAttendProbe({
    ...probe,
    samples: [
      { items: 1, seconds: 0.003, computeSeconds: 0.002 },
      { items: 2, seconds: 0.002, computeSeconds: 0.001 },
    ],
  });
  assert.equal(down.itemComputeS, 0);
  assert.throws(() => fitAttendProbe({ ...probe, samples: [probe.samples[0]!] }), /two or more item counts/);
});

test("localNodeSpecs: an Attend probe and the logits timing map to the measured per-request terms", () => {
  const s = localNodeSpecs({ ...profile, attend: { memory: probe, storage: probe }, sampleLogitS: 3e-9 });
  const near = (a: number | undefined, b: number, what: string) =>
    assert.ok(a !== undefined && Math.abs(a - b) < 1e-12, `${what}: ${a} != ${b}`);
  near(s.gpu.sampleLogitS, 3e-9, "sampleLogitS");
  // memory-node: compute intercept 0.5 ms; per item 0.5 ms − 4e5 B / 4e9 B/s (its KV rate) = 0.4 ms;
  // wire intercept 0.5 ms − RTT 0.2 ms = 0.3 ms; wire slope 1.5 ms − 5e5 B / 5e8 B/s = 0.5 ms.
  near(s.memory.requestComputeS, 0.0005, "memory requestComputeS");
  near(s.memory.unitOverheadS, 0.0004, "memory unitOverheadS");
  near(s.memory.requestOverheadS, 0.0003, "memory requestOverheadS");
  near(s.memory.unitWireS, 0.0005, "memory unitWireS");
  // storage-node: its KV rate is 3e9 B/s: 0.5 ms − 4e5/3e9 s.
  near(s.storage.unitOverheadS, 0.0005 - 4e5 / 3e9, "storage unitOverheadS");
  near(s.storage.requestOverheadS, 0.0003, "storage requestOverheadS");
  assert.equal(s.storage.appendSyncS, 0.001);
  assert.equal(s.memory.splitOverheadS, undefined);
  // Long items of 2.4e6 B of KV each on the memory-node (KV rate 4e9 B/s): compute 1.75 ms at 1 item, 4.75 ms
  // at 4. Each beyond the short line and its extra KV: 1.75 − 0.5 − 1·(0.5 + 2e6/4e9 s = 0.5) = 0.25 ms;
  // 4.75 − 0.5 − 4·1 = 0.25 ms; the mean, 0.25 ms, is the split overhead. The KV rate stays the kernel's.
  const long = {
    samples: [
      { items: 1, seconds: 0.003, computeSeconds: 0.00175 },
      { items: 4, seconds: 0.006, computeSeconds: 0.00475 },
    ],
    kvBytes: 2.4e6,
    splitMinBytes: 2e6,
  };
  const l = localNodeSpecs({ ...profile, attend: { memory: { ...probe, long }, storage: probe } });
  near(l.memory.splitOverheadS, 0.00025, "memory splitOverheadS");
  assert.equal(l.memory.readBandwidth, 4e9);
  assert.equal(l.storage.splitOverheadS, undefined);
  assert.equal(l.memory.splitMinBytes, 2e6);
});
