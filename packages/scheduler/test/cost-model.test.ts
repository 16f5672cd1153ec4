// Pins the cost model's formulas on a tiny shape with round hardware figures,
// every expected value computed by hand in the comments.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { ModelShape } from "@tessera/core";
import {
  SHAPES,
  classifierS,
  denseCurveS,
  denseLayerS,
  gpuAttentionLayerS,
  kvBytesPerPosition,
  layerParams,
  outerParams,
  predict,
  type AttentionSpec,
  type GpuSpec,
  type Workload,
} from "@tessera/scheduler";

// dim 8, hidden 16, 2 layers, 2 heads of head_dim 4, 1 KV head (GQA), vocab 10.
const tiny: ModelShape = {
  dim: 8,
  hiddenDim: 16,
  nLayers: 2,
  nHeads: 2,
  nKvHeads: 1,
  vocabSize: 10,
  seqLen: 64,
  headDim: 4,
  ropeTheta: 10000,
  normEps: 1e-5,
};
const fastLink = { bandwidth: 1e30, sustainedFraction: 1, rttS: 0 };
// 1000 FLOP/s, 100 B/s, both at 100%: times are easy to compute by hand.
const gpu: GpuSpec = {
  kind: "gpu",
  id: "g0",
  pool: "g",
  pricePerHour: 2,
  flops: 1000,
  flopsEfficiency: 1,
  memoryBandwidth: 100,
  bandwidthEfficiency: 1,
  memoryBytes: 1e6,
  pcieBandwidth: 10,
  hostMemoryBytes: 1e6,
  link: fastLink,
};
const mem: AttentionSpec = {
  kind: "memory",
  id: "m0",
  pool: "m",
  pricePerHour: 1,
  readBandwidth: 10,
  writeBandwidth: 10,
  bandwidthEfficiency: 1,
  capacityBytes: 1e6,
  flops: 1e9,
  flopsEfficiency: 1,
  link: { bandwidth: 1e30, sustainedFraction: 1, rttS: 0.5 },
};
const w = (batch: number): Workload => ({
  batch,
  promptTokens: 6,
  outputTokens: 8, // mean decode context 6 + 8/2 = 10, max 14
  weightBytes: 2,
  kvBytes: 2,
  wireBytes: 2,
});
const close = (actual: number, expected: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)), `${what}: ${actual} != ${expected}`);

test("parameter and KV sizes: the Llama layout (tiny shape by hand, Llama-2-70B ≈ 69.0B)", () => {
  // 2·8·8 (wq, wo) + 2·8·4 (wk, wv) + 3·8·16 (w1..w3) + 2·8 (norms) = 128 + 64 + 384 + 16
  assert.equal(layerParams(tiny), 592);
  assert.equal(outerParams(tiny), 2 * 10 * 8 + 8);
  assert.equal(kvBytesPerPosition(tiny, 2), 16); // K and V: 2 · 1 head · 4 · 2 B
  const s70 = SHAPES["Llama-2-70B"]!.shape;
  const total = s70.nLayers * layerParams(s70) + outerParams(s70);
  assert.ok(Math.abs(total - 68.98e9) < 0.01e9, `Llama-2-70B parameters ${total}`);
  // Llama-2-70B KV: 80 layers · 2 · 8 heads · 128 · 2 B = 320 KiB per token.
  assert.equal(s70.nLayers * kvBytesPerPosition(s70, 2), 327_680);
});

test("roofline terms: bandwidth-bound at batch 1, FLOP-bound at batch 100", () => {
  close(denseLayerS(tiny, gpu, 1, 2), 11.84, "dense b=1"); // max(2·592/1000, 592·2/100)
  close(denseLayerS(tiny, gpu, 100, 2), 118.4, "dense b=100"); // max(2·100·592/1000, 11.84)
  close(classifierS(tiny, gpu, 1, 2), 1.76, "classifier"); // (80 + 8)·2 B / 100 B/s
  // Attention, ctx 10: FLOPs 4·2·4·10 = 320 → 0.32 s; bytes 10·16 = 160 → 1.6 s.
  close(gpuAttentionLayerS(tiny, gpu, 1, 10, 2), 1.6, "attention");
});

test("predict: KV in GPU memory, one stage, one micro-batch", () => {
  const p = predict(tiny, w(1), {
    stages: [{ node: gpu, layerStart: 0, layerEnd: 2 }],
    kv: { mode: "gpu" },
    microBatches: 1,
  });
  // step = 2 layers · (11.84 dense + 1.6 attention) + 1.76 classifier (+ ~0 s logits hand-off)
  close(p.decodeStepS, 28.64, "decode step");
  assert.equal(p.bottleneck, "cycle latency");
  // prefill: max(2·6·592·2 / 1000 = 14.208, 2·592·2 / 100 = 23.68) + causal attention 4·2·4·(36/2)·2 / 1000
  close(p.prefillS, 23.68 + 1.152, "prefill");
  close(p.tokensPerSecond, 8 / (24.832 + 8 * 28.64), "tokens/s");
  close(p.decodeTokensPerSecond, 1 / 28.64, "decode tokens/s");
  close(p.dollarsPerMillionTokens, (2 / 3600 / p.tokensPerSecond) * 1e6, "$/Mtok");
  const m = p.memory[0]!;
  assert.equal(m.weightsBytes, (2 * 592 + 80 + 88) * 2); // layers + embedding + classifier + final norm
  assert.equal(m.kvBytes, 2 * 14 * 16); // 2 layers · 14 positions · 16 B
  assert.equal(m.activationBytes, 6 * 64 * 2 + 10 * 4); // 6 prompt tokens · (4·8 + 2·16) · 2 B + logits
  assert.deepEqual(p.violations, []);
});

test("predict: KV on an attention node, micro-batch pipelining T = max(C, m·D_max)", () => {
  const placement = (m: number, units: number) => ({
    stages: [{ node: gpu, layerStart: 0, layerEnd: 2 }],
    kv: { mode: "nodes" as const, headGroups: 1, shares: [{ node: mem, units }] },
    microBatches: m,
  });
  // m = 2, b = 1: dense 2·11.84 + 1.76 = 25.44; attention per layer 1 seq · 10 · 16 B / 10 B/s = 16 s
  // (+0.5 s RTT of the memory node's link); cycle C = 25.44 + 2 layers · 16.5 (the GPU link is free)
  const two = predict(tiny, w(2), placement(2, 2));
  close(two.cycleS, 25.44 + 33, "cycle m=2");
  close(two.perAttentionNode[0]!.attentionS, 32, "attention node busy per micro-batch");
  close(two.decodeStepS, 64, "step m=2 = 2 · 32");
  assert.equal(two.bottleneck, "m0 attention");
  // m = 1, b = 2: dense still 25.44 (weight-bound); attention 32 s per layer; C = 25.44 + 2·32.5 = 90.44
  const one = predict(tiny, w(2), placement(1, 2));
  close(one.decodeStepS, 90.44, "step m=1 = cycle");
  assert.equal(one.bottleneck, "cycle latency");
  close(one.pricePerHour, 3, "price = gpu + memory node");
  // The memory node holds 2 sequences · 2 layers · 14 positions · 16 B.
  assert.equal(one.memory.find((x) => x.id === "m0")!.kvBytes, 896);
});

test("predict: KV in host memory read over PCIe (FlexGen-style) adds a PCIe station", () => {
  const p = predict(tiny, w(1), {
    stages: [{ node: gpu, layerStart: 0, layerEnd: 2 }],
    kv: { mode: "host" },
    microBatches: 1,
  });
  // PCIe: 2 layers · 10 positions · 16 B / (10 B/s · 0.8) = 40 s on top of the GPU-memory step.
  close(p.decodeStepS, 28.64 + 40, "step");
  assert.equal(p.memory.find((x) => x.kind === "host")!.kvBytes, 448);
  assert.equal(p.memory.find((x) => x.kind === "gpu")!.kvBytes, 0);
});

test("predict: capacity overruns are reported, bad placements throw", () => {
  const small = { ...gpu, memoryBytes: 1000 };
  const p = predict(tiny, w(1), {
    stages: [{ node: small, layerStart: 0, layerEnd: 2 }],
    kv: { mode: "gpu" },
    microBatches: 1,
  });
  assert.match(p.violations[0]!, /^g0 gpu memory: /);
  assert.throws(
    () =>
      predict(tiny, w(1), {
        stages: [{ node: gpu, layerStart: 0, layerEnd: 1 }],
        kv: { mode: "gpu" },
        microBatches: 1,
      }),
    /cover 1 of 2 layers/,
  );
  assert.throws(
    () =>
      predict(tiny, w(2), {
        stages: [{ node: gpu, layerStart: 0, layerEnd: 2 }],
        kv: { mode: "nodes", headGroups: 1, shares: [{ node: mem, units: 1 }] },
        microBatches: 1,
      }),
    /expected batch × headGroups = 2/,
  );
  assert.throws(
    () =>
      predict(tiny, w(1), {
        stages: [{ node: gpu, layerStart: 0, layerEnd: 2 }],
        kv: { mode: "gpu" },
        microBatches: 2,
      }),
    /microBatches/,
  );
});

test("measured dense curve: τ(b) interpolated between samples, linear in b beyond the last", () => {
  // Samples: 100 B/s at batch 1 (τ = 0.01 s/B), 50 B/s at batch 16 (τ = 0.02 s/B); given unsorted.
  const curve = [
    { batch: 16, weightBytesPerS: 50 },
    { batch: 1, weightBytesPerS: 100 },
  ];
  close(denseCurveS(curve, 1), 0.01, "τ(1)");
  close(denseCurveS(curve, 8.5), 0.015, "τ(8.5) = 0.01 + 0.01·7.5/15");
  close(denseCurveS(curve, 32), 0.04, "τ(32) = 0.02·32/16");
  assert.throws(() => denseCurveS([], 1), /denseCurve is empty/);
  const g: GpuSpec = { ...gpu, denseCurve: curve, layerOverheadS: 0.5 };
  // A layer's 592 weights · 2 B = 1184 B: b = 1 → 11.84 s + 0.5; b = 32 → 1184 · 0.04 = 47.36 + 0.5
  // (the roofline would say max(2·32·592/1000 = 37.888, 11.84)).
  close(denseLayerS(tiny, g, 1, 2), 12.34, "dense b=1");
  close(denseLayerS(tiny, g, 32, 2), 47.86, "dense b=32");
  // Classifier (80 + 8) · 2 B = 176 B · τ(16) = 0.02 → 3.52 s (no layer overhead).
  close(classifierS(tiny, g, 16, 2), 3.52, "classifier b=16");
});

test("predict: measured Attend costs and logits sampling add to the cycle; absent, nothing changes", () => {
  const placement = (g: GpuSpec, a: AttentionSpec) => ({
    stages: [{ node: g, layerStart: 0, layerEnd: 2 }],
    kv: { mode: "nodes" as const, headGroups: 1, shares: [{ node: a, units: 2 }] },
    microBatches: 1,
  });
  const a: AttentionSpec = {
    ...mem,
    unitOverheadS: 0.5,
    requestComputeS: 0.25,
    requestOverheadS: 0.125,
    unitWireS: 0.0625,
  };
  const g: GpuSpec = { ...gpu, sampleLogitS: 0.01 };
  const p = predict(tiny, w(2), placement(g, a));
  // Dense 2 · 11.84 + 1.76 = 25.44 (weight-bound at b = 2).
  // Attention per layer: 2 seqs · 10 positions · 16 B / 10 B/s = 32 s + 2 units · 0.5 + 0.25 = 33.25;
  // the node is busy 2 layers · 33.25 = 66.5 s per step.
  close(p.perAttentionNode[0]!.attentionS, 66.5, "attention node");
  // Chain per layer: 33.25 + RTT 0.5 + request overhead 0.125 + 2 units · 0.0625 = 34; two layers 68.
  // Logits hand-off: 2 · 10 · 4 B on a free link, RTT 0, plus 2 seqs · vocab 10 · 0.01 s = 0.2.
  close(p.perStage[0]!.transferS, 0.2, "transfer = logits hand-off");
  close(p.decodeStepS, 25.44 + 68 + 0.2, "step");
  // A split threshold at the request's KV (2 · 10 · 16 B = 320 B per layer) adds 0.75 s per layer
  // to the node and the chain; one byte above it, nothing.
  const split = (min: number) =>
    predict(tiny, w(2), placement(g, { ...a, splitOverheadS: 0.75, splitMinBytes: min })).decodeStepS;
  close(split(320), 25.44 + 68 + 0.2 + 2 * 0.75, "step with a split request");
  close(split(321), 25.44 + 68 + 0.2, "step below the split threshold");
  // A double read buffer of 100 B chunks filled at 50 B/s: min(100, 320 B) / 50 = 2 s per layer;
  // with 1000 B chunks the whole 320 B request: 6.4 s per layer.
  const buffered = (chunkBytes: number) =>
    predict(tiny, w(2), placement(g, { ...a, readBuffer: { chunkBytes, fillBytesPerS: 50 } })).decodeStepS;
  close(buffered(100), 25.44 + 68 + 0.2 + 2 * 2, "step with a 100 B read buffer");
  close(buffered(1000), 25.44 + 68 + 0.2 + 2 * 6.4, "step with a 1000 B read buffer");
  // Without the measured terms (catalogue parts): the step of the pipelining test, 90.44.
  close(predict(tiny, w(2), placement(gpu, mem)).decodeStepS, 90.44, "unchanged without the terms");
});
