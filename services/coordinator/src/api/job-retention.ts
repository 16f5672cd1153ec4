/**
 * Retention of batch-job data (issue 13): an ended job (completed, failed
 * or cancelled) is deleted — input, results and state — once it ended
 * longer ago than the coordinator's `jobRetentionMs` (30 days by default,
 * as OpenAI's batch outputs expire), by a sweep every `jobSweepMs` in each
 * coordinator's job worker (JetStream 2.9 has no per-message TTL, and a
 * stream's max_age would also drop queued jobs' inputs). The sweep also
 * deletes data objects that belong to no job (a submit that died between
 * storing the input and the state, a chunk written after its job was
 * deleted) once they are `orphanGraceMs` old. Several coordinators may
 * sweep at once: every delete is idempotent.
 */
import { formatDuration } from "@tessera/core";
import { isTerminal, jobKeyOfObject, type JobState, type JobStore } from "@tessera/nats";

/**
 * How old an object of no job must be before a sweep deletes it, in ms:
 * longer than any submit takes between storing its input and its state.
 */
export const JOB_ORPHAN_GRACE_MS = 3_600_000;

/** What one {@link sweepJobs} deleted. */
export interface SweepResult {
  /** Keys of the jobs deleted. */
  jobs: string[];
  /** Names of the objects of no job deleted. */
  orphans: string[];
}

/**
 * Deletes every job that ended at least `retentionMs` before `now`
 * ({@link JobStore.delete}), then every data object of no job at least
 * `orphanGraceMs` old.
 * @throws NATS errors (the next sweep tries again).
 */
export async function sweepJobs(
  store: JobStore,
  o: { retentionMs: number; orphanGraceMs?: number; now?: number },
): Promise<SweepResult> {
  const now = o.now ?? Date.now();
  const states = await store.list();
  const objects = await store.objects();
  const expiredState = (s: JobState) =>
    isTerminal(s.status) && Date.parse(s.finishedAt ?? s.updatedAt) + o.retentionMs <= now;
  const deleted = new Set<string>();
  for (const s of states.filter(expiredState)) {
    // Checked again on the state read at delete time: a job of the same id
    // submitted since the list (after a DeleteJob) is not expired, and stays.
    if (await store.delete(s.id, { onlyIf: expiredState, objects })) deleted.add(s.id);
  }
  // A job's objects are under its key, and a tenant's input under <tenant>/<id> even when its key is <id>.
  const keysOf = (s: JobState) => [s.id, jobKeyOfObject(s.inputObject) ?? s.id];
  const live = new Set(states.filter((s) => !deleted.has(s.id)).flatMap(keysOf));
  // Objects listed before the deletes: those of the jobs just deleted are gone already.
  const gone = new Set(states.filter((s) => deleted.has(s.id)).flatMap(keysOf));
  const orphans: string[] = [];
  const grace = o.orphanGraceMs ?? JOB_ORPHAN_GRACE_MS;
  for (const obj of objects) {
    const key = jobKeyOfObject(obj.name);
    if (key !== undefined && (live.has(key) || gone.has(key))) continue;
    // A job submitted since the list above has a new object: the grace keeps it.
    if (obj.mtimeMs + grace > now || (key !== undefined && (await store.get(key)))) continue;
    await store.deleteObject(obj.name);
    orphans.push(obj.name);
  }
  return { jobs: [...deleted], orphans };
}

/** A running retention sweep ({@link startJobSweeper}). */
export interface JobSweeper {
  /** Stops sweeping; waits for a sweep under way. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Sweeps `store` at once and then every `sweepMs` ({@link sweepJobs}),
 * logging what each sweep deleted and, once per sweep, why one failed.
 */
export function startJobSweeper(
  store: JobStore,
  o: { retentionMs: number; sweepMs: number; orphanGraceMs?: number; log: (line: string) => void },
): JobSweeper {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let running: Promise<void> = Promise.resolve();
  const sweep = () => {
    running = (async () => {
      try {
        const r = await sweepJobs(store, o);
        if (r.jobs.length + r.orphans.length > 0)
          o.log(
            `jobs: retention: deleted ${r.jobs.length} jobs ended over ${formatDuration(o.retentionMs)} ago` +
              `${r.jobs.length ? ` (${r.jobs.slice(0, 10).join(", ")}${r.jobs.length > 10 ? ", ..." : ""})` : ""}` +
              ` and ${r.orphans.length} objects of no job`,
          );
      } catch (err) {
        o.log(`jobs: retention sweep failed: ${(err as Error).message}; next in ${formatDuration(o.sweepMs)}`);
      }
      if (!stopped) timer = setTimeout(sweep, o.sweepMs);
    })();
  };
  sweep();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
