/**
 * Error classes shared by every role. Each has a `name`, the fields a caller
 * needs, and an `rpcCode` (a gRPC status code) that `RpcError.from` keeps
 * when the error crosses a gRPC boundary.
 */
import { Code } from "@tessera/proto";

/** Base of Tessera's own errors. */
export class TesseraError extends Error {
  override name = "TesseraError";
  /** gRPC status code used when this error crosses a service boundary. */
  rpcCode: number = Code.INTERNAL;
}

/**
 * A checkpoint or tokenizer file is missing, truncated or inconsistent.
 * `expected` and `found` are sizes in bytes (or header values) when the
 * problem is a size mismatch.
 */
export class CheckpointError extends TesseraError {
  override name = "CheckpointError";
  constructor(
    readonly path: string,
    message: string,
    readonly expected?: number,
    readonly found?: number,
    options?: { cause?: unknown },
  ) {
    super(
      `${path}: ${message}` +
        (expected !== undefined && found !== undefined ? ` (expected ${expected} bytes, found ${found})` : ""),
      options,
    );
    this.rpcCode = Code.INVALID_ARGUMENT;
  }
}

/** One bad line of an input file: 1-based line number and what is wrong. */
export interface BadLine {
  line: number;
  message: string;
}

/** An input file (prompts JSONL) has bad lines; lists every one of them. */
export class InputFileError extends TesseraError {
  override name = "InputFileError";
  constructor(
    readonly path: string,
    readonly badLines: readonly BadLine[],
  ) {
    super(
      `${path}: ${badLines.length} bad line(s):\n` + badLines.map((b) => `  line ${b.line}: ${b.message}`).join("\n"),
    );
    this.rpcCode = Code.INVALID_ARGUMENT;
  }
}

/** A node did not answer at `address`. */
export class NodeUnreachableError extends TesseraError {
  override name = "NodeUnreachableError";
  constructor(
    readonly role: string,
    readonly address: string,
    options?: { cause?: unknown },
  ) {
    const why = options?.cause instanceof Error ? `: ${options.cause.message}` : "";
    super(`${role}-node at ${address} is unreachable${why}`, options);
    this.rpcCode = Code.UNAVAILABLE;
  }
}

/** A request would exceed a node's configured capacity (bytes). */
export class CapacityError extends TesseraError {
  override name = "CapacityError";
  constructor(
    message: string,
    readonly requestedBytes: number,
    readonly availableBytes: number,
  ) {
    super(`${message}: needs ${requestedBytes} bytes, ${availableBytes} available`);
    this.rpcCode = Code.RESOURCE_EXHAUSTED;
  }
}

/** A configuration value is invalid; names the option. */
export class ConfigError extends TesseraError {
  override name = "ConfigError";
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`${option}: ${message}`);
    this.rpcCode = Code.INVALID_ARGUMENT;
  }
}
