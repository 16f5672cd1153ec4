/**
 * The names of the job queue (issue 5): its NATS stream, subjects, consumers
 * and buckets for one prefix ({@link jobNames}), job ids and keys, a tenant's
 * scoping of its job ids ({@link tenantJobKey}), and the names of the objects
 * a job stores.
 */
import { randomBytes } from "node:crypto";
import { DEFAULT_NATS_PREFIX } from "./connection.js";
import { JobError } from "./job-errors.js";
import type { JobPriority, JobState } from "./job-state.js";

/** NATS names of the job queue for one prefix (see docs: issue 5 shared design). */
export interface JobNames {
  /** Work-queue stream, e.g. "TESSERA_JOBS". */
  stream: string;
  /** Subject of a priority, e.g. "tessera.jobs.high". */
  subject(priority: JobPriority): string;
  /** Wildcard of every priority's subject, e.g. "tessera.jobs.*". */
  subjects: string;
  /** Durable pull consumer of a priority's subject. */
  consumer(priority: JobPriority): string;
  /** Job-state KV bucket. */
  stateBucket: string;
  /** Object store of inputs and results. */
  dataBucket: string;
  /** Object store bucket of uploaded files (OpenAI's /v1/files; file-store.ts). */
  filesBucket: string;
}

/**
 * The names of the job queue under `prefix`.
 * @throws JobError when the prefix is not letters, digits, "_" or "-".
 */
export function jobNames(prefix = DEFAULT_NATS_PREFIX): JobNames {
  if (!/^[A-Za-z0-9_-]+$/.test(prefix)) {
    throw new JobError(`prefix: must be letters, digits, "_" or "-", got ${JSON.stringify(prefix)}`);
  }
  const up = prefix.toUpperCase().replace(/-/g, "_");
  return {
    stream: `${up}_JOBS`,
    subject: (p) => `${prefix}.jobs.${p}`,
    subjects: `${prefix}.jobs.*`,
    consumer: (p) => `${up}_JOBS_${p.toUpperCase()}`,
    stateBucket: `${prefix}-job-state`,
    dataBucket: `${prefix}-job-data`,
    filesBucket: `${prefix}-files`,
  };
}

const JOB_ID = /^[A-Za-z0-9_-]{1,128}$/;

/** @throws JobError unless `id` is 1–128 letters, digits, "_" or "-". */
export function checkJobId(id: string): string {
  if (!JOB_ID.test(id))
    throw new JobError(`job id: must be 1-128 letters, digits, "_" or "-", got ${JSON.stringify(id)}`);
  return id;
}

/**
 * The key of tenant `tenant`'s job `id` when a job of another already holds
 * `id`: `<tenant>/<id>`, each "." of the tenant written "=" (so that no
 * token of the key's NATS subject is empty). No job id holds "/" or "=", so
 * the key never meets a job id, nor another tenant's key.
 */
export function tenantJobKey(tenant: string, id: string): string {
  return `${tenant.replaceAll(".", "=")}/${id}`;
}

/** The id job `s`'s tenant knows it by: its key less the `<tenant>/` of {@link tenantJobKey}. */
export function ownJobId(s: Pick<JobState, "id" | "tenant">): string {
  if (s.tenant === undefined) return s.id;
  const scope = tenantJobKey(s.tenant, "");
  return s.id.startsWith(scope) ? s.id.slice(scope.length) : s.id;
}

const JOB_KEY = /^(?:[A-Za-z0-9_=-]{1,64}\/)?[A-Za-z0-9_-]{1,128}$/;

/**
 * What operators and admins address a job by ({@link JobState.id}): a job id,
 * or a tenant's `<tenant>/<id>` ({@link tenantJobKey}).
 * @throws JobError otherwise.
 */
export function checkJobKey(key: string): string {
  if (!JOB_KEY.test(key))
    throw new JobError(
      `job id: must be 1-128 letters, digits, "_" or "-" (or TENANT/ID, a tenant's job), got ${JSON.stringify(key)}`,
    );
  return key;
}

/**
 * The job key an object of the data bucket belongs to: `<key>/input-<hex>.jsonl`
 * (its input) or `<key>/results/<6 digits>-<owner>.jsonl` (a result chunk);
 * undefined for any other name.
 */
export function jobKeyOfObject(name: string): string | undefined {
  return /^(.+)\/(?:input-[0-9a-f]+|results\/[0-9]{6}-[^/]+)\.jsonl$/.exec(name)?.[1];
}

/** `bytes` random bytes in hex: the unique part of new job ids, object names and claims. */
export const nonce = (bytes = 6) => randomBytes(bytes).toString("hex");
