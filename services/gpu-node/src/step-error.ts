/**
 * A step's failure as the gpu-node answers it: ForwardResponse.error, a
 * NodeError whose `code`, `role` and `address` name the node that failed and
 * whose `reason` (NodeErrorReason) says what the caller should do about it,
 * so nothing downstream classifies failures by their message text.
 */
import { Code, NodeErrorReason, RpcError } from "@tessera/proto";

/** A NodeError as a ForwardResponse carries it. */
export interface StepNodeError {
  code: number;
  message: string;
  role: string;
  address: string;
  reason: NodeErrorReason;
  /** The one sequence the failure belongs to (its id on the failing node), or "". */
  seqId: string;
}

/** A failed step: answered as ForwardResponse.error, the stream stays open. */
export class StepError extends Error {
  override name = "StepError";
  constructor(
    /** gRPC status code. */
    readonly code: number,
    message: string,
    /** Role of the node that failed ("gpu", "attention"). */
    readonly role: string,
    /** Its address (host:port). */
    readonly address: string,
    /** What the caller should do about it. */
    readonly reason: NodeErrorReason,
    /** The one sequence the failure belongs to (an attention node's NodeError.seq_id), or "". */
    readonly seqId = "",
  ) {
    super(message);
  }
}

/**
 * The reason of a failure known only by its gRPC code (a stream that broke,
 * an unexpected error): UNAVAILABLE and DEADLINE_EXCEEDED are UNREACHABLE,
 * RESOURCE_EXHAUSTED is CAPACITY, INVALID_ARGUMENT and OUT_OF_RANGE are
 * INVALID_REQUEST, CANCELLED is CANCELLED, anything else INTERNAL.
 */
export function reasonOfCode(code: number): NodeErrorReason {
  switch (code) {
    case Code.UNAVAILABLE:
    case Code.DEADLINE_EXCEEDED:
      return NodeErrorReason.UNREACHABLE;
    case Code.RESOURCE_EXHAUSTED:
      return NodeErrorReason.CAPACITY;
    case Code.INVALID_ARGUMENT:
    case Code.OUT_OF_RANGE:
      return NodeErrorReason.INVALID_REQUEST;
    case Code.CANCELLED:
      return NodeErrorReason.CANCELLED;
    default:
      return NodeErrorReason.INTERNAL;
  }
}

/**
 * A step's failure as a NodeError: a {@link StepError} as it is (with the
 * sequence an attention node named); anything
 * unexpected is this node's (role "gpu", address `self`) error with its
 * RpcError code (INTERNAL for a plain Error), reason INTERNAL unless the
 * code says CAPACITY (RESOURCE_EXHAUSTED).
 */
export function toNodeError(err: unknown, self: string): StepNodeError {
  if (err instanceof StepError)
    return {
      code: err.code,
      message: err.message,
      role: err.role,
      address: err.address,
      reason: err.reason,
      seqId: err.seqId,
    };
  const e = RpcError.from(err);
  const reason = e.code === Code.RESOURCE_EXHAUSTED ? NodeErrorReason.CAPACITY : NodeErrorReason.INTERNAL;
  return { code: e.code, message: e.message, role: "gpu", address: self, reason, seqId: "" };
}

/** An INVALID_ARGUMENT StepError of step `stepId` from this node (`self`): reason INVALID_REQUEST. */
export function invalidStep(stepId: bigint, self: string, message: string): StepError {
  return new StepError(
    Code.INVALID_ARGUMENT,
    `step ${stepId}: ${message}`,
    "gpu",
    self,
    NodeErrorReason.INVALID_REQUEST,
  );
}
