/**
 * The wire dtypes of the Attend path shared by memory- and storage-nodes:
 * planAttendRequest takes q/k/v in f16 or f32 (each on its own), and
 * answerAttend answers o in the dtype of the request's q.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { f16ToF32, f32BitsToF16Bits, f32Tensor, tensorF32, wireTensor, type WireDtype } from "@tessera/core";
import { answerAttend, planAttendRequest, type AttendTarget } from "@tessera/attention";
import { AttendRequestSchema, Code, DType, create } from "@tessera/proto";

const seq: AttendTarget = {
  layout: { nLayers: 1, nHeads: 4, nKvHeads: 2, headDim: 3 },
  maxPositions: 8,
  layerLength: () => 0,
};
const lookup = (id: string) => (id === "a" ? seq : undefined);
const values = (n: number, scale: number) => Float32Array.from({ length: n }, (_, i) => (i - n / 3) * scale);
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const roundF16 = (x: number) => ((f32[0] = x), f16ToF32(f32BitsToF16Bits(u32[0]!)));

function request(q: WireDtype, k: WireDtype, v: WireDtype) {
  return create(AttendRequestSchema, {
    stepId: 3n,
    layer: 0,
    items: [{ seqId: "a", startPos: 0, nTokens: 2 }],
    q: wireTensor(values(24, 0.1), [2, 4, 3], q),
    k: wireTensor(values(12, 0.3), [2, 2, 3], k),
    v: wireTensor(values(12, 0.7), [2, 2, 3], v),
  });
}

test("planAttendRequest decodes f16 and f32 q/k/v, mixed, to the same f32 values", () => {
  for (const [q, k, v] of [
    ["f16", "f16", "f16"],
    ["f32", "f16", "f32"],
    ["f16", "f32", "f16"],
  ] as const) {
    const plan = planAttendRequest(request(q, k, v), lookup, "node X");
    const want = (a: Float32Array, d: WireDtype) => [...a].map((x) => (d === "f16" ? roundF16(x) : x));
    assert.deepEqual([...plan.q], want(values(24, 0.1), q));
    assert.deepEqual([...plan.k], want(values(12, 0.3), k));
    assert.deepEqual([...plan.v], want(values(12, 0.7), v));
  }
  const bad = request("f16", "f16", "f16");
  bad.k!.dtype = DType.DTYPE_BF16;
  assert.throws(
    () => planAttendRequest(bad, lookup, "node X"),
    (err: Error & { rpcCode?: number }) =>
      err.rpcCode === Code.INVALID_ARGUMENT &&
      err.message === "node X: layer 0: k: expected dtype F32 or F16, got DTYPE_BF16",
  );
});

test("answerAttend answers o in the dtype of the request's q", async () => {
  const o = values(24, 0.05);
  for (const dtype of ["f16", "f32"] as const) {
    const res = await answerAttend(request(dtype, "f32", "f32"), { role: "memory", address: "x:1" }, () =>
      f32Tensor(o, [2, 12]),
    );
    assert.equal(res.error, undefined);
    const out = create(AttendRequestSchema, { q: res.o }).q!;
    assert.equal(out.dtype, dtype === "f16" ? DType.DTYPE_F16 : DType.DTYPE_F32);
    assert.deepEqual(out.shape, [2, 12]);
    assert.deepEqual(
      [...tensorF32(out, "o")],
      [...o].map((x) => (dtype === "f16" ? roundF16(x) : x)),
    );
  }
});
