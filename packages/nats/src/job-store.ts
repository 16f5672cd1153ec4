/**
 * The job queue's one entry point (issue 5): {@link JobStore} over the
 * stream, the job-state bucket and the object store of a prefix. Each method
 * is the work of one module: job-submit, job-state-bucket, job-quota,
 * job-results, job-worker, job-delete.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { BatchInput } from "@tessera/core";
import { deleteJob, deleteObject, listObjects, type DeleteJobOptions, type JobObject } from "./job-delete.js";
import { destroyJobHandles, openJobHandles, type JobHandles } from "./job-handles.js";
import type { JobNames } from "./job-keys.js";
import { tenantUsage, type TenantUsage } from "./job-quota.js";
import { readResults, storeResults, type StoredResult } from "./job-results.js";
import { cancelJob, findJob, getJob, listJobs, updateJob, watchJob } from "./job-state-bucket.js";
import { JOB_PRIORITIES, type JobPriority, type JobState } from "./job-state.js";
import { submitJob, type SubmitJobRequest, type SubmitJobResult } from "./job-submit.js";
import {
  claimJob,
  ensureConsumers,
  finishJob,
  nextJob,
  readInput,
  type JobClaim,
  type JobConsumers,
  type JobDelivery,
} from "./job-worker.js";

/** Options of {@link JobStore.open}. */
export interface JobStoreOptions {
  /** @default "tessera" */
  prefix?: string;
}

/**
 * The job queue over JetStream. `open` declares the stream and buckets
 * (idempotent). Submitters use submit/list/get/results/cancel/watch;
 * workers use ensureConsumers/nextJob/claim/readInput/storeResults/finish.
 * The connection stays the caller's to close.
 */
export class JobStore {
  readonly nc: NatsConnection;
  readonly names: JobNames;
  private consumers: JobConsumers = new Map();

  private constructor(private readonly h: JobHandles) {
    this.nc = h.nc;
    this.names = h.names;
  }

  /**
   * Declares (or binds to) the work-queue stream, the job-state bucket and
   * the object store under the prefix.
   * @throws JobError for a bad prefix; NATS errors when JetStream is off.
   */
  static async open(nc: NatsConnection, options: JobStoreOptions = {}): Promise<JobStore> {
    return new JobStore(await openJobHandles(nc, options.prefix));
  }

  /**
   * Validates the input (both formats; see parseBatchInput), stores it,
   * creates the job state ("queued") and publishes the job to its
   * priority's subject with msgID = job id. An id that exists already
   * returns that job (`created: false`) and stores nothing; a job whose
   * message was never published (the submitter died) is published again.
   * @throws InputFileError naming the file, line and field of every bad line
   *   (a line over `maxLineBytes` or not UTF-8 included); JobError for a bad id.
   */
  async submit(req: SubmitJobRequest): Promise<SubmitJobResult> {
    return submitJob(this.h, req);
  }

  /**
   * What tenant `tenant`'s jobs hold now, computed from their states (so it
   * survives any restart and never drifts): inputs plus recorded results,
   * and jobs not yet ended. One scan of every job state ({@link list}).
   */
  async usage(tenant: string): Promise<TenantUsage> {
    return tenantUsage(this.h, tenant);
  }

  /** The job's state, or undefined when there is none. */
  async get(id: string): Promise<JobState | undefined> {
    return getJob(this.h, id);
  }

  /**
   * Tenant `tenant`'s job `id` (see {@link SubmitJobRequest.scopeToTenant}):
   * the one under {@link tenantJobKey}, else the one under `id` when it is
   * the tenant's; another tenant's job of that id is not found.
   */
  async find(tenant: string, id: string): Promise<JobState | undefined> {
    return findJob(this.h, tenant, id);
  }

  /**
   * Every job (oldest submitted first), optionally only one tenant's.
   * One ordered consumer over the state bucket's last values (not a
   * request per job: quotas read every job at each submit).
   */
  async list(filter: { tenant?: string } = {}): Promise<JobState[]> {
    return listJobs(this.h, filter);
  }

  /**
   * Compare-and-set on the job's state: `mutate` gets the current state and
   * returns the new one, or undefined to leave it. Retried on a concurrent
   * change.
   * @returns the state written, or undefined when `mutate` left it.
   * @throws JobNotFoundError; whatever `mutate` throws.
   */
  async update(id: string, mutate: (s: JobState) => JobState | undefined): Promise<JobState | undefined> {
    return updateJob(this.h, id, mutate);
  }

  /**
   * Cancels a job: a queued one becomes "cancelled" at once (and its message
   * is removed); a running one gets `cancelRequested` and its worker stops
   * it and marks it "cancelled". An ended job is left as it is.
   * @returns the state after the change.
   * @throws JobNotFoundError
   */
  async cancel(id: string): Promise<JobState> {
    return cancelJob(this.h, id);
  }

  /**
   * The job's state now and at every change, ending after it reaches an
   * end state (or when `signal` aborts). Backed by a KV watch of the key.
   * @throws JobNotFoundError when there is no such job.
   */
  watch(id: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<JobState> {
    return watchJob(this.h, id, options);
  }

  /**
   * The job's result lines (one JSON object each, no newline) in the order
   * they were stored. With `follow`, keeps yielding as chunks are stored
   * until the job ends.
   * @throws JobNotFoundError
   */
  results(id: string, options: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<string> {
    return readResults(this.h, id, options);
  }

  // ---- worker side ----

  /**
   * Declares the durable pull consumers (one per priority). `ackWaitMs`:
   * how long a job may go without `working()` before JetStream redelivers
   * it to another worker; applied when the consumers are created or updated.
   */
  async ensureConsumers(ackWaitMs: number): Promise<void> {
    return ensureConsumers(this.h, this.consumers, ackWaitMs);
  }

  /**
   * Pulls the next job of `priorities` (default: every one), highest
   * priority first; waits (woken by new publishes, polling every `pollMs`
   * for redeliveries) until there is one or `signal` aborts (then
   * undefined).
   * @throws JobError when ensureConsumers() was not called.
   */
  async nextJob(
    signal: AbortSignal,
    pollMs = 1000,
    priorities: readonly JobPriority[] = JOB_PRIORITIES,
  ): Promise<JobDelivery | undefined> {
    return nextJob(this.h, this.consumers, signal, pollMs, priorities);
  }

  /**
   * Claims a pulled job for `worker`: a queued job, or a running one whose
   * earlier claim was redelivered (its worker died), becomes "running" with
   * a new owner. A job that ended, or was cancelled while queued, is skipped
   * (ack it); a cancel requested before the claim ends it as "cancelled".
   * @throws JobNotFoundError (ack the message: there is nothing to run).
   */
  async claim(jobId: string, worker: string): Promise<JobClaim> {
    return claimJob(this.h, jobId, worker);
  }

  /**
   * Reads and parses a job's input.
   * @throws JobError when the object is missing; InputFileError (cannot happen for a submitted job).
   */
  async readInput(s: JobState): Promise<BatchInput> {
    return readInput(this.h, s);
  }

  /**
   * Stores a chunk of results and checkpoints them: writes the chunk object
   * (named after the claim), then records it, the prompt ids and the token
   * counts in the job state, if `owner` still holds the job.
   * @returns the state written.
   * @throws JobOwnershipLostError when another claim holds the job (stop running it).
   */
  async storeResults(jobId: string, owner: string, results: readonly StoredResult[]): Promise<JobState> {
    return storeResults(this.h, jobId, owner, results);
  }

  /**
   * Ends a claimed job: "completed", "failed" (with `error`) or "cancelled".
   * @throws JobOwnershipLostError when another claim holds the job.
   */
  async finish(jobId: string, owner: string, status: "completed" | "failed" | "cancelled", error?: string) {
    return finishJob(this.h, jobId, owner, status, error);
  }

  // ---- deletion ----

  /**
   * Deletes job `id`: its input and result objects (those recorded, and any
   * chunk a worker wrote but never recorded), then its state's messages (no
   * delete marker is written, so a full store gets room). An
   * unfinished job is cancelled first; a running one is waited for (its
   * worker stops it at its next step) up to `waitMs`, then deleted all the
   * same (a worker that still runs it finds no state and stops); in a full
   * store, where the cancel cannot be written, it is deleted at once. Its
   * queue message, if any is left, is removed too.
   * Idempotent: deleting it again, or a job deleted meanwhile, answers
   * undefined. With `onlyIf`, a job whose current state fails it is left
   * alone (undefined): a sweep's "ended before the cutoff", so a job of the
   * same id submitted since the sweep listed the states is kept. With
   * `objects`, that list of the data bucket is searched for unrecorded
   * chunks instead of listing it again (a sweep lists it once).
   * @returns the job's last state, or undefined when there was none (or `onlyIf` refused it).
   */
  async delete(id: string, options: DeleteJobOptions = {}): Promise<JobState | undefined> {
    return deleteJob(this.h, id, options);
  }

  /** Every object of the data bucket (inputs and result chunks), for sweeps. O(objects). */
  async objects(): Promise<JobObject[]> {
    return listObjects(this.h);
  }

  /**
   * Deletes one object of the data bucket; a missing one is no error. Its
   * chunks' and its meta's messages are deleted (ObjectStore.delete would
   * first write a "deleted" meta, which a full store refuses).
   */
  async deleteObject(name: string): Promise<void> {
    return deleteObject(this.h, name);
  }

  /**
   * Deletes the stream, the consumers and both buckets of this prefix
   * (tests clean up with it).
   */
  async destroy(): Promise<void> {
    return destroyJobHandles(this.h);
  }
}
