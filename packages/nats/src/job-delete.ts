/**
 * Deleting jobs and their data (issue 13): a job with its input, its result
 * chunks (recorded or not), its queue message and its state; single objects
 * of the data bucket (retention sweeps list them with {@link listObjects}).
 * Every delete removes the messages themselves and writes no marker, so that
 * it works in a full store and gives it room.
 */
import { Base64UrlPaddedCodec } from "@nats-io/obj";
import { JobNotFoundError, isStoreFull } from "./job-errors.js";
import type { JobHandles } from "./job-handles.js";
import { jobKeyOfObject } from "./job-keys.js";
import { cancelJob, getJob, watchJob } from "./job-state-bucket.js";
import { isTerminal, type JobState } from "./job-state.js";

/** How long {@link JobStore.delete} waits for a running job to stop once cancelled, in ms. */
export const JOB_DELETE_WAIT_MS = 10_000;

/** A stored object of the job data bucket ({@link JobStore.objects}). */
export interface JobObject {
  name: string;
  /** Bytes. */
  size: number;
  /** When it was stored, ms since the epoch. */
  mtimeMs: number;
}

/** Options of {@link deleteJob} ({@link JobStore.delete}). */
export interface DeleteJobOptions {
  /** How long to wait for a running job to stop once cancelled, in ms. @default JOB_DELETE_WAIT_MS */
  waitMs?: number;
  /** Delete only when the job's current state passes this (else leave it, answering undefined). */
  onlyIf?: (s: JobState) => boolean;
  /** The data bucket's objects, listed once by the caller (else listed here: O(objects)). */
  objects?: readonly JobObject[];
}

/**
 * Deletes job `id` and all it stored ({@link JobStore.delete}).
 * @returns the job's last state, or undefined when there was none (or `onlyIf` refused it).
 */
export async function deleteJob(
  h: JobHandles,
  id: string,
  options: DeleteJobOptions = {},
): Promise<JobState | undefined> {
  let s = await getJob(h, id);
  if (!s || (options.onlyIf && !options.onlyIf(s))) return undefined;
  let cancelled = true;
  if (!isTerminal(s.status)) {
    s = await cancelJob(h, id).catch((err: unknown) => {
      if (!isStoreFull(err)) throw err;
      cancelled = false;
      return s!;
    });
    if (cancelled && !isTerminal(s.status)) {
      const signal = AbortSignal.timeout(options.waitMs ?? JOB_DELETE_WAIT_MS);
      try {
        for await (const cur of watchJob(h, id, { signal })) s = cur;
      } catch (err) {
        if (!(err instanceof JobNotFoundError)) throw err;
      }
    }
  }
  const names = new Set([s.inputObject, ...s.chunks]);
  for (const o of options.objects ?? (await listObjects(h))) if (jobKeyOfObject(o.name) === id) names.add(o.name);
  for (const name of names) await deleteObject(h, name);
  if (s.streamSeq !== undefined) await h.jsm.streams.deleteMessage(h.names.stream, s.streamSeq).catch(() => false);
  // The key's messages deleted: no delete marker is written (a full store has no room for one).
  await deleteState(h, id);
  return s;
}

/** Every object of the data bucket ({@link JobStore.objects}). O(objects). */
export async function listObjects(h: JobHandles): Promise<JobObject[]> {
  return (await h.obj.list())
    .filter((o) => !o.deleted)
    .map((o) => ({ name: o.name, size: o.size, mtimeMs: Date.parse(o.mtime) }));
}

/** Deletes one object of the data bucket; a missing one is no error ({@link JobStore.deleteObject}). */
export async function deleteObject(h: JobHandles, name: string): Promise<void> {
  const info = await h.obj.info(name);
  if (!info) return;
  const stream = `OBJ_${h.names.dataBucket}`;
  await deleteSubject(h, stream, `$O.${h.names.dataBucket}.C.${info.nuid}`);
  await deleteSubject(h, stream, `$O.${h.names.dataBucket}.M.${Base64UrlPaddedCodec.encode(name)}`);
}

/** Deletes key `key`'s messages from the state bucket, writing no delete marker. */
export function deleteState(h: JobHandles, key: string): Promise<void> {
  return deleteSubject(h, `KV_${h.names.stateBucket}`, `$KV.${h.names.stateBucket}.${key}`);
}

/**
 * Deletes every message of `subject` in `stream`, one by one, last first
 * (an object's chunks: 1 per 128 KiB). Not a filtered purge: nats-server
 * 2.9 does not take a filtered purge off the account's storage in use, so
 * a full store would stay full.
 */
async function deleteSubject(h: JobHandles, stream: string, subject: string): Promise<void> {
  for (;;) {
    const m = await h.jsm.streams.getMessage(stream, { last_by_subj: subject });
    if (!m) return;
    await h.jsm.streams.deleteMessage(stream, m.seq, false);
  }
}
