import { Metadata, status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";
import { NodeErrorReason } from "./gen/tessera/v1/tensor_pb.js";

/** gRPC status codes, re-exported so callers need not import grpc-js. */
export const Code = GrpcStatus;
/** A gRPC status code (0 OK .. 16 UNAUTHENTICATED). */
export type Code = GrpcStatus;

/**
 * The one error type that crosses a gRPC boundary. Servers throw it (or
 * anything, which {@link RpcError.from} converts) and the adapter sends its
 * code and message as the call's status; clients receive it back with the
 * same code, so `err.code === Code.RESOURCE_EXHAUSTED` works on both sides.
 * Modelled on connect-es `ConnectError`.
 */
export class RpcError extends Error {
  override readonly name = "RpcError";
  constructor(
    /** gRPC status code. */
    readonly code: Code,
    message: string,
    options?: { cause?: unknown; metadata?: Metadata },
  ) {
    super(message, options);
    this.metadata = options?.metadata ?? new Metadata();
  }
  /** Trailing metadata sent with the status. */
  readonly metadata: Metadata;

  /**
   * Converts anything thrown into an RpcError: an RpcError passes through, a
   * grpc-js ServiceError keeps its code and details, an error carrying a
   * numeric `rpcCode` keeps it, anything else becomes INTERNAL.
   */
  static from(err: unknown): RpcError {
    if (err instanceof RpcError) return err;
    if (isServiceError(err)) {
      return new RpcError(err.code, err.details || err.message, { cause: err, metadata: err.metadata });
    }
    if (err instanceof Error) {
      const rpcCode = (err as { rpcCode?: unknown }).rpcCode;
      const code = typeof rpcCode === "number" ? (rpcCode as Code) : Code.INTERNAL;
      return new RpcError(code, err.message, { cause: err });
    }
    return new RpcError(Code.INTERNAL, String(err), { cause: err });
  }

  /** The name of a status code, e.g. "UNAVAILABLE". */
  static codeName(code: number): string {
    return (GrpcStatus as unknown as Record<number, string>)[code] ?? `CODE_${code}`;
  }
}

function isServiceError(err: unknown): err is ServiceError {
  return (
    err instanceof Error &&
    typeof (err as Partial<ServiceError>).code === "number" &&
    typeof (err as Partial<ServiceError>).details === "string"
  );
}

/** Trailing-metadata key of a {@link NodeErrorReason} (its number) on a unary RPC's error. */
const REASON_KEY = "tessera-node-error-reason";

/**
 * Marks `err` with `reason` in its trailing metadata, for a unary RPC
 * whose answer has no NodeError to carry one (e.g. OpenSequence refused
 * for a full disk: DISK_FULL, where RESOURCE_EXHAUSTED alone would read as
 * "no KV capacity"). Returns `err`.
 */
export function withNodeErrorReason(err: RpcError, reason: NodeErrorReason): RpcError {
  err.metadata.set(REASON_KEY, String(reason));
  return err;
}

/** The {@link NodeErrorReason} {@link withNodeErrorReason} put on an error; UNSPECIFIED when none. */
export function nodeErrorReasonOf(err: RpcError): NodeErrorReason {
  const v = Number(err.metadata.get(REASON_KEY)[0]);
  return Number.isInteger(v) && v in NodeErrorReason ? (v as NodeErrorReason) : NodeErrorReason.UNSPECIFIED;
}
