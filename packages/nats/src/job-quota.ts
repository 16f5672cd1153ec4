/**
 * Per-tenant quotas of the job store (issue 13): what a tenant's jobs hold,
 * computed from their states, and the check a submit makes against the
 * tenant's {@link TenantQuota} before it stores anything.
 */
import { QuotaExceededError } from "./job-errors.js";
import type { JobHandles } from "./job-handles.js";
import { listJobs } from "./job-state-bucket.js";
import { isTerminal } from "./job-state.js";

/** Per-tenant limits of the job store (issue 13). */
export interface TenantQuota {
  /** Most bytes a tenant's jobs may store: inputs plus results. */
  maxBytes: number;
  /** Most of a tenant's jobs that have not ended (queued or running). */
  maxJobs: number;
}

/** What a tenant's jobs hold ({@link JobStore.usage}). */
export interface TenantUsage {
  /** Inputs plus recorded results, in bytes, of every stored job. */
  bytes: number;
  /** Jobs not yet ended (queued or running). */
  jobs: number;
}

/** What tenant `tenant`'s jobs hold now ({@link JobStore.usage}): one scan of every job state. */
export async function tenantUsage(h: JobHandles, tenant: string): Promise<TenantUsage> {
  let bytes = 0;
  let jobs = 0;
  for (const s of await listJobs(h, { tenant })) {
    bytes += s.inputBytes + (s.resultBytes ?? 0);
    if (!isTerminal(s.status)) jobs++;
  }
  return { bytes, jobs };
}

/**
 * @throws QuotaExceededError when tenant `tenant`'s jobs with one more of
 *   `inputBytes` would pass `quota` (its unfinished jobs first, then bytes).
 */
export async function checkQuota(h: JobHandles, tenant: string, quota: TenantQuota, inputBytes: number): Promise<void> {
  const usage = await tenantUsage(h, tenant);
  if (usage.jobs + 1 > quota.maxJobs) throw new QuotaExceededError(tenant, "jobs", usage.jobs, quota.maxJobs, 1);
  if (usage.bytes + inputBytes > quota.maxBytes)
    throw new QuotaExceededError(tenant, "bytes", usage.bytes, quota.maxBytes, inputBytes);
}
