/**
 * The job-state bucket (issue 5): reading job states (one, a tenant's, all),
 * changing one by compare-and-set on its revision, watching one, and
 * cancelling a job. Every other part of the job queue changes a state
 * through {@link updateJob} only.
 */
import { DeliverPolicy } from "@nats-io/jetstream";
import { JobError, JobNotFoundError, isCasMismatch } from "./job-errors.js";
import type { JobHandles } from "./job-handles.js";
import { tenantJobKey } from "./job-keys.js";
import { isTerminal, type JobState } from "./job-state.js";

/** Now as an ISO-8601 time (the times of a {@link JobState}). */
export const now = () => new Date().toISOString();
const enc = new TextEncoder();
const dec = new TextDecoder();
/** A job state as the bucket stores it: UTF-8 JSON. */
export const encodeState = (s: JobState) => enc.encode(JSON.stringify(s));
const decodeState = (data: Uint8Array) => JSON.parse(dec.decode(data)) as JobState;

const CAS_TRIES = 20;

/** Job `id`'s state and the revision of its entry, or undefined when there is none. */
async function getEntry(h: JobHandles, id: string): Promise<{ state: JobState; revision: number } | undefined> {
  const e = await h.kv.get(id);
  if (!e || e.operation !== "PUT" || e.length === 0) return undefined;
  return { state: decodeState(e.value), revision: e.revision };
}

/** Job `id`'s state, or undefined when there is none ({@link JobStore.get}). */
export async function getJob(h: JobHandles, id: string): Promise<JobState | undefined> {
  return (await getEntry(h, id))?.state;
}

/** Tenant `tenant`'s job `id` ({@link JobStore.find}). */
export async function findJob(h: JobHandles, tenant: string, id: string): Promise<JobState | undefined> {
  const scoped = await getJob(h, tenantJobKey(tenant, id));
  if (scoped) return scoped;
  const plain = await getJob(h, id);
  return plain?.tenant === tenant ? plain : undefined;
}

/** Every job, oldest submitted first, optionally only one tenant's ({@link JobStore.list}). */
export async function listJobs(h: JobHandles, filter: { tenant?: string } = {}): Promise<JobState[]> {
  const states = (await allStates(h)).filter((s) => filter.tenant === undefined || s.tenant === filter.tenant);
  return states.sort((a, b) => a.submittedAt.localeCompare(b.submittedAt) || a.id.localeCompare(b.id));
}

/** The last value of every key of the state bucket, deleted keys left out. */
async function allStates(h: JobHandles): Promise<JobState[]> {
  const bucket = h.names.stateBucket;
  const c = await h.js.consumers.get(`KV_${bucket}`, {
    filter_subjects: `$KV.${bucket}.>`,
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  const states: JobState[] = [];
  let pending = (await c.info(true)).num_pending;
  // Fetches, not consume(): a message counted in `pending` may be deleted
  // before it is delivered (DeleteJob and the retention sweep delete
  // messages, writing no marker), and consume() would then wait for it
  // forever; a fetch ends after LIST_FETCH_EXPIRES_MS without it.
  while (pending > 0) {
    const batch = await c.fetch({ max_messages: Math.min(pending, LIST_FETCH_MAX), expires: LIST_FETCH_EXPIRES_MS });
    let got = 0;
    try {
      for await (const m of batch) {
        got++;
        const op = m.headers?.get("KV-Operation");
        if (op !== "DEL" && op !== "PURGE" && m.data.length > 0) states.push(decodeState(m.data));
        pending = m.info.pending;
        if (pending === 0) break;
      }
    } finally {
      await batch.close();
    }
    if (got === 0) break;
  }
  return states;
}

/** Most state messages one fetch of {@link allStates} asks for. */
const LIST_FETCH_MAX = 1000;
/** How long one fetch of {@link allStates} waits for messages that were counted but may have been deleted, in ms. */
const LIST_FETCH_EXPIRES_MS = 1000;

/**
 * Compare-and-set on job `id`'s state ({@link JobStore.update}).
 * @returns the state written, or undefined when `mutate` left it.
 * @throws JobNotFoundError; whatever `mutate` throws.
 */
export async function updateJob(
  h: JobHandles,
  id: string,
  mutate: (s: JobState) => JobState | undefined,
): Promise<JobState | undefined> {
  for (let i = 0; ; i++) {
    const cur = await getEntry(h, id);
    if (!cur) throw new JobNotFoundError(id);
    const next = mutate(cur.state);
    if (!next) return undefined;
    next.updatedAt = now();
    try {
      await h.kv.update(id, encodeState(next), cur.revision);
      return next;
    } catch (err) {
      // Only a lost compare-and-set is retried: after any other error
      // (a timeout) the write may have landed, and re-applying `mutate`
      // to the new state could apply it twice.
      if (!isCasMismatch(err)) throw err;
      if (i >= CAS_TRIES)
        throw new JobError(`job "${id}": state kept changing under update`, { cause: err, rpcCode: 10 }); // ABORTED
    }
  }
}

/**
 * Cancels job `id` ({@link JobStore.cancel}).
 * @returns the state after the change.
 * @throws JobNotFoundError
 */
export async function cancelJob(h: JobHandles, id: string): Promise<JobState> {
  const after = await updateJob(h, id, (s) => {
    if (isTerminal(s.status) || s.cancelRequested) return undefined;
    if (s.status === "queued") return { ...s, status: "cancelled", finishedAt: now() };
    return { ...s, cancelRequested: true };
  });
  if (after?.status === "cancelled" && after.streamSeq !== undefined) {
    await h.jsm.streams.deleteMessage(h.names.stream, after.streamSeq).catch(() => false);
  }
  return after ?? (await getJob(h, id))!;
}

/**
 * Job `id`'s state now and at every change until it ends ({@link JobStore.watch}).
 * @throws JobNotFoundError when there is no such job.
 */
export async function* watchJob(
  h: JobHandles,
  id: string,
  options: { signal?: AbortSignal } = {},
): AsyncGenerator<JobState> {
  if (!(await getJob(h, id))) throw new JobNotFoundError(id);
  const w = await h.kv.watch({ key: id });
  const stop = () => w.stop();
  options.signal?.addEventListener("abort", stop, { once: true });
  try {
    for await (const e of w) {
      if (e.operation !== "PUT") continue;
      const s = decodeState(e.value);
      yield s;
      if (isTerminal(s.status)) return;
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
    w.stop();
  }
}
