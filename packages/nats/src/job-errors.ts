/**
 * The job queue's errors (see jobs.ts): each carries the gRPC code it
 * crosses the wire with (`rpcCode`, read by RpcError.from), and the fields
 * a caller acts on.
 */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { TesseraError, formatBytes } from "@tessera/core";

/**
 * A job operation failed: bad input or id (INVALID_ARGUMENT, the default
 * gRPC code), or a job state that kept changing under an update (ABORTED:
 * worth retrying).
 */
export class JobError extends TesseraError {
  override name = "JobError";
  constructor(message: string, options?: { cause?: unknown; rpcCode?: number }) {
    super(message, options);
    this.rpcCode = options?.rpcCode ?? 3; // INVALID_ARGUMENT
  }
}

/** No job has this id. */
export class JobNotFoundError extends JobError {
  override name = "JobNotFoundError";
  constructor(readonly jobId: string) {
    super(`job "${jobId}" not found`);
    this.rpcCode = 5; // NOT_FOUND
  }
}

/** Another worker claimed the job (this one's claim expired); the holder of `owner` must stop. */
export class JobOwnershipLostError extends JobError {
  override name = "JobOwnershipLostError";
  constructor(
    readonly jobId: string,
    readonly owner: string,
    readonly currentOwner: string | undefined,
  ) {
    super(`job "${jobId}": claim ${owner} lost to ${currentOwner ?? "nobody"}`);
    this.rpcCode = 10; // ABORTED
  }
}

/** What a tenant's quota limits ({@link TenantQuota}): bytes stored, or jobs not yet ended. */
export type QuotaKind = "bytes" | "jobs";

/**
 * A tenant's submit would take it over its quota (RESOURCE_EXHAUSTED). The
 * message, sent to that tenant only, names its usage and limit; nothing
 * was stored.
 */
export class QuotaExceededError extends JobError {
  override name = "QuotaExceededError";
  constructor(
    readonly tenant: string,
    readonly kind: QuotaKind,
    /** Bytes stored (inputs + results) or jobs queued/running, before this submit. */
    readonly usage: number,
    readonly limit: number,
    /** What this submit adds: the input's bytes, or 1 job. */
    readonly adding: number,
  ) {
    super(
      kind === "bytes"
        ? `tenant ${tenant}: quota exceeded: its jobs store ${formatBytes(usage)} (inputs and results) and this ` +
            `input adds ${formatBytes(adding)}, over its limit of ${formatBytes(limit)}; delete finished jobs ` +
            "(tessera jobs delete ID) or wait for their retention to end"
        : `tenant ${tenant}: quota exceeded: ${usage} of its jobs are queued or running, its limit is ${limit}; ` +
            "wait for one to end or cancel one",
    );
    this.rpcCode = 8; // RESOURCE_EXHAUSTED
  }
}

/**
 * JetStream refused a write because its store is full (the server's
 * `max_file_store`, an account's or a stream's byte limit):
 * RESOURCE_EXHAUSTED, naming what was being written.
 */
export class JobStoreFullError extends JobError {
  override name = "JobStoreFullError";
  constructor(what: string, cause: unknown) {
    super(
      `${what}: the job store (NATS JetStream) is full; nothing was stored. Try again later; ` +
        "the operator frees room by deleting jobs or lowering --job-retention",
      { cause, rpcCode: 8 }, // RESOURCE_EXHAUSTED
    );
  }
}

/**
 * JetStream API error codes of a full store: 10023 "insufficient
 * resources" (the server's max_file_store / max_memory_store), 10047
 * "storage resources exceeded for account", 10027 / 10028 a stream's
 * "maximum bytes" / "maximum messages" exceeded (discard new).
 */
const STORE_FULL_CODES = new Set([10023, 10047, 10027, 10028]);

/** Whether `err` (or a cause) is JetStream refusing a write for want of room (see STORE_FULL_CODES). */
export function isStoreFull(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof JobStoreFullError) return true;
    if (e instanceof JetStreamApiError && STORE_FULL_CODES.has(e.code)) return true;
  }
  return false;
}

/** Whether `err` (or its cause) is JetStream refusing a write because the key changed since the revision read. */
export function isCasMismatch(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (
      e instanceof JetStreamApiError &&
      (e.code === JetStreamApiCodes.StreamWrongLastSequence ||
        e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
    )
      return true;
    if (/wrong last sequence/i.test(e.message)) return true;
  }
  return false;
}
