/**
 * A job's results (issue 5): a worker stores them chunk by chunk, a
 * submitter reads (or follows) them.
 *
 * Exactly-once results: a worker writes each chunk of result lines to an
 * object whose name carries its claim (`owner`) and only then records the
 * chunk in the job state with a compare-and-set on the entry's revision,
 * checking it still owns the job. Results are read from the recorded chunks
 * only, so a chunk written by a worker that died (or lost the job) before
 * recording it is never read, and its prompts are run again by whoever
 * resumes the job.
 */
import { JobNotFoundError, JobOwnershipLostError, JobStoreFullError, JobError, isStoreFull } from "./job-errors.js";
import type { JobHandles } from "./job-handles.js";
import { getJob, updateJob, watchJob } from "./job-state-bucket.js";
import type { JobState } from "./job-state.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One stored result line of a chunk. */
export interface StoredResult {
  promptId: string;
  /** The output line in the job's format (one JSON object, no newline). */
  line: string;
  promptTokens: number;
  completionTokens: number;
  failed: boolean;
}

/**
 * Stores a chunk of results and checkpoints them ({@link JobStore.storeResults}).
 * @returns the state written.
 * @throws JobOwnershipLostError when another claim holds the job (stop running it).
 */
export async function storeResults(
  h: JobHandles,
  jobId: string,
  owner: string,
  results: readonly StoredResult[],
): Promise<JobState> {
  const cur = await getJob(h, jobId);
  if (!cur) throw new JobNotFoundError(jobId);
  if (cur.owner !== owner) throw new JobOwnershipLostError(jobId, owner, cur.owner);
  if (results.length === 0) return cur;
  const name = `${jobId}/results/${String(cur.chunks.length).padStart(6, "0")}-${owner}.jsonl`;
  const data = enc.encode(results.map((r) => r.line + "\n").join(""));
  try {
    await h.obj.putBlob({ name }, data);
  } catch (err) {
    if (isStoreFull(err)) throw new JobStoreFullError(`job "${jobId}": storing ${results.length} results`, err);
    throw err;
  }
  const s = await updateJob(h, jobId, (s) => {
    if (s.owner !== owner) throw new JobOwnershipLostError(jobId, owner, s.owner);
    // Stored already (a retry after a write whose answer was lost): no change.
    const done = new Set(s.doneIds);
    if (results.every((r) => done.has(r.promptId))) return undefined;
    return {
      ...s,
      chunks: [...s.chunks, name],
      resultBytes: (s.resultBytes ?? 0) + data.byteLength,
      doneIds: [...s.doneIds, ...results.map((r) => r.promptId)],
      promptsDone: s.promptsDone + results.length,
      promptsFailed: s.promptsFailed + results.filter((r) => r.failed).length,
      promptTokens: s.promptTokens + results.reduce((n, r) => n + r.promptTokens, 0),
      completionTokens: s.completionTokens + results.reduce((n, r) => n + r.completionTokens, 0),
    };
  });
  return s ?? (await getJob(h, jobId))!;
}

/**
 * Job `id`'s result lines in the order they were stored ({@link JobStore.results}).
 * @throws JobNotFoundError
 */
export async function* readResults(
  h: JobHandles,
  id: string,
  options: { follow?: boolean; signal?: AbortSignal } = {},
): AsyncGenerator<string> {
  let next = 0;
  const chunksOf = async function* (s: JobState) {
    for (; next < s.chunks.length; next++) yield* await readChunk(h, s.chunks[next]!);
  };
  if (!options.follow) {
    const s = await getJob(h, id);
    if (!s) throw new JobNotFoundError(id);
    yield* chunksOf(s);
    return;
  }
  for await (const s of watchJob(h, id, options)) yield* chunksOf(s);
}

/** The result lines of chunk object `name`. @throws JobError when it is missing. */
async function readChunk(h: JobHandles, name: string): Promise<string[]> {
  const data = await h.obj.getBlob(name);
  if (!data) throw new JobError(`result chunk ${name} is missing from ${h.names.dataBucket}`);
  return dec
    .decode(data)
    .split("\n")
    .filter((l) => l !== "");
}
