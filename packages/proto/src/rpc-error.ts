import { Metadata, status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";
import { NodeErrorReason } from "./gen/tessera/v1/tensor_pb.js";

/** Trailing-metadata key of an {@link RpcError}'s reason: the NodeErrorReason's number. */
const REASON_KEY = "tessera-reason";

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
    options?: { cause?: unknown; metadata?: Metadata; reason?: NodeErrorReason },
  ) {
    super(message, options);
    this.metadata = options?.metadata ?? new Metadata();
    if (options?.reason) this.metadata.set(REASON_KEY, String(options.reason));
  }
  /** Trailing metadata sent with the status. */
  readonly metadata: Metadata;

  /**
   * What the caller should do about it (a unary call's counterpart of
   * NodeError.reason), sent as trailing metadata "tessera-reason";
   * UNSPECIFIED when none was given.
   */
  get reason(): NodeErrorReason {
    const n = Number(this.metadata.get(REASON_KEY)[0]);
    return Number.isInteger(n) && n in NodeErrorReason ? (n as NodeErrorReason) : NodeErrorReason.UNSPECIFIED;
  }

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
