// The NodeError.reason of an Attend failure, by error class and gRPC code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { AttentionRequestError, SequenceKvError, answerAttend, attendErrorReason } from "@tessera/attention";
import { CapacityError, TesseraError } from "@tessera/core";
import { Code, NodeErrorReason, RpcError } from "@tessera/proto";

class DamagedFile extends TesseraError {
  constructor() {
    super("layer-0000.kv: truncated");
    this.rpcCode = Code.DATA_LOSS;
  }
}

test("attendErrorReason classifies by error class, then by gRPC code", () => {
  const R = NodeErrorReason;
  assert.equal(attendErrorReason(new AttentionRequestError(Code.NOT_FOUND, "unknown")), R.KV_LOST);
  assert.equal(attendErrorReason(new AttentionRequestError(Code.INVALID_ARGUMENT, "shapes")), R.INVALID_REQUEST);
  assert.equal(attendErrorReason(new AttentionRequestError(Code.OUT_OF_RANGE, "gap", R.KV_LOST)), R.KV_LOST);
  assert.equal(attendErrorReason(new CapacityError("no room", 10, 5)), R.CAPACITY);
  assert.equal(attendErrorReason(new RpcError(Code.RESOURCE_EXHAUSTED, "disk full")), R.CAPACITY);
  assert.equal(attendErrorReason(new DamagedFile()), R.KV_LOST);
  assert.equal(attendErrorReason(new RpcError(Code.FAILED_PRECONDITION, "buffer")), R.INVALID_REQUEST);
  assert.equal(attendErrorReason(new Error("a bug")), R.INTERNAL);
});

test("answerAttend puts the reason in the response's error, with its code and message", async () => {
  const r = await answerAttend({ stepId: 3n, layer: 1 } as never, { role: "memory", address: "a:1" }, () => {
    throw new CapacityError("memory-node a:1: no room", 10, 5);
  });
  assert.equal(r.error?.code, Code.RESOURCE_EXHAUSTED);
  assert.equal(r.error?.reason, NodeErrorReason.CAPACITY);
  assert.equal(r.error?.role, "memory");
  assert.match(r.error?.message ?? "", /no room/);
});

test("a SequenceKvError names its sequence in the response's error (seq_id), with its own reason and code; others name none", async () => {
  const fail = (err: unknown) =>
    answerAttend({ stepId: 4n, layer: 0 } as never, { role: "storage", address: "s:1" }, () => {
      throw err;
    });
  const full = await fail(
    new SequenceKvError("seq-7", NodeErrorReason.DISK_FULL, 'storage-node s:1: sequence "seq-7": ENOSPC', {
      code: Code.RESOURCE_EXHAUSTED,
    }),
  );
  assert.deepEqual(
    { code: full.error?.code, reason: full.error?.reason, seqId: full.error?.seqId },
    { code: Code.RESOURCE_EXHAUSTED, reason: NodeErrorReason.DISK_FULL, seqId: "seq-7" },
  );
  const whole = await fail(new DamagedFile());
  assert.deepEqual(
    { reason: whole.error?.reason, seqId: whole.error?.seqId },
    { reason: NodeErrorReason.KV_LOST, seqId: "" },
  );
});
