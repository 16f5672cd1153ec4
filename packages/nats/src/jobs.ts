/**
 * Batch jobs over NATS JetStream (issue 5): a job's input and results live
 * in an object store, its state (status, progress, checkpoint) in a
 * key-value bucket, and pending jobs in a work-queue stream, one subject per
 * priority. Every name comes from {@link jobNames}, so tests isolate
 * themselves with their own prefix.
 *
 * The job queue's public surface; its parts live one subject a file:
 * job-state (what a job is), job-keys (names, ids, tenant keys),
 * job-handles (declaring the stream and buckets), job-state-bucket (reading,
 * changing, watching and cancelling states), job-submit, job-quota,
 * job-worker (consumers, pulling, claiming, ending), job-results, job-trace,
 * job-delete, and job-store (the {@link JobStore} that calls them).
 *
 * Exactly-once results: a worker writes each chunk of result lines to an
 * object whose name carries its claim (`owner`) and only then records the
 * chunk in the job state with a compare-and-set on the entry's revision,
 * checking it still owns the job. Results are read from the recorded chunks
 * only, so a chunk written by a worker that died (or lost the job) before
 * recording it is never read, and its prompts are run again by whoever
 * resumes the job.
 */
export {
  JobError,
  JobNotFoundError,
  JobOwnershipLostError,
  JobStoreFullError,
  QuotaExceededError,
  isStoreFull,
  type QuotaKind,
} from "./job-errors.js";
export { JOB_DELETE_WAIT_MS, type DeleteJobOptions, type JobObject } from "./job-delete.js";
export {
  checkJobId,
  checkJobKey,
  jobKeyOfObject,
  jobNames,
  ownJobId,
  tenantJobKey,
  type JobNames,
} from "./job-keys.js";
export type { TenantQuota, TenantUsage } from "./job-quota.js";
export type { StoredResult } from "./job-results.js";
export {
  JOB_PRIORITIES,
  isTerminal,
  type JobPriority,
  type JobSampling,
  type JobState,
  type JobStatus,
} from "./job-state.js";
export { JobStore, type JobStoreOptions } from "./job-store.js";
export type { SubmitJobRequest, SubmitJobResult } from "./job-submit.js";
export type { JobClaim, JobDelivery } from "./job-worker.js";
