/**
 * Submitting a job (issue 5): the input is validated and stored, the job
 * state created ("queued") and the job published to its priority's subject.
 * A tenant's own submit scopes its job id to the tenant ({@link
 * tenantJobKey}), and a tenant's quota is checked before anything is stored
 * (issue 13).
 */
import { randomBytes } from "node:crypto";
import { SpanKind } from "@opentelemetry/api";
import { parseBatchInput, type BatchFormat, type BatchInput } from "@tessera/core";
import { endSpanWhen } from "@tessera/proto";
import { deleteObject, deleteState } from "./job-delete.js";
import { JobError, JobStoreFullError, isStoreFull } from "./job-errors.js";
import type { JobHandles } from "./job-handles.js";
import { checkJobId, nonce, tenantJobKey } from "./job-keys.js";
import { checkQuota, type TenantQuota } from "./job-quota.js";
import { encodeState, findJob, getJob, now, updateJob } from "./job-state-bucket.js";
import { JOB_PRIORITIES, type JobPriority, type JobSampling, type JobState } from "./job-state.js";
import { jobTracer, traceHeaders } from "./job-trace.js";

const enc = new TextEncoder();

/** What {@link JobStore.submit} takes. */
export interface SubmitJobRequest {
  /** Job id; a new one ("job_" + 16 hex digits) when unset. Submitting an existing id returns that job. */
  jobId?: string;
  tenant?: string;
  /**
   * A tenant's own submit (through the coordinator): `jobId` names a job of
   * `tenant` only. The job is stored under its id when no job holds it, else
   * under {@link tenantJobKey}; the same id again returns the tenant's own
   * job ({@link JobStore.find}), never another's, so a tenant can neither
   * probe nor take another's ids. Needs `tenant`.
   */
  scopeToTenant?: boolean;
  /** @default "normal" */
  priority?: JobPriority;
  /** The input file's bytes (UTF-8 JSONL). */
  input: Uint8Array;
  /** Name of the input for error messages. @default "input" */
  fileName?: string;
  /** @default "auto": detected from the first line */
  format?: BatchFormat | "auto";
  model?: string;
  tokenizer?: string;
  sampling?: JobSampling;
  /**
   * Checks the parsed input before anything is stored (e.g. the
   * coordinator's limits: prompts per job, prompt bytes, max_tokens, bytes);
   * what it throws fails the submit.
   */
  check?: (input: BatchInput, bytes: number) => void;
  /** Most bytes of one line of the input. @default PROMPT_FILE_DEFAULTS.maxLineBytes (1 MiB) */
  maxLineBytes?: number;
  /**
   * The tenant's quota, checked against {@link JobStore.usage} before
   * anything is stored (needs `tenant`); unset: no quota.
   */
  quota?: TenantQuota;
}

/** What {@link JobStore.submit} returns. */
export interface SubmitJobResult {
  job: JobState;
  /** False when a job with this id existed already (nothing was stored). */
  created: boolean;
}

/**
 * Submits a job ({@link JobStore.submit}) under a "tessera.job.submit" span.
 * @throws InputFileError naming the file, line and field of every bad line;
 *   JobError for a bad id; QuotaExceededError; JobStoreFullError.
 */
export async function submitJob(h: JobHandles, req: SubmitJobRequest): Promise<SubmitJobResult> {
  return jobTracer.startActiveSpan("tessera.job.submit", { kind: SpanKind.PRODUCER }, (span) =>
    endSpanWhen(span, submitUntraced(h, req), (r) =>
      span.setAttributes({
        "tessera.job_id": r.job.id,
        "tessera.job.priority": r.job.priority,
        "tessera.job.prompts": r.job.promptsTotal,
        "tessera.job.input_bytes": r.job.inputBytes,
        "tessera.job.created": r.created,
      }),
    ),
  );
}

async function submitUntraced(h: JobHandles, req: SubmitJobRequest): Promise<SubmitJobResult> {
  const id = checkJobId(req.jobId ?? `job_${nonce(8)}`);
  try {
    return await submitChecked(h, req, id);
  } catch (err) {
    // A full store (the server's max_file_store, a stream's max_bytes): RESOURCE_EXHAUSTED, said so.
    if (isStoreFull(err) && !(err instanceof JobStoreFullError)) throw new JobStoreFullError(`job "${id}"`, err);
    throw err;
  }
}

async function submitChecked(h: JobHandles, req: SubmitJobRequest, id: string): Promise<SubmitJobResult> {
  const fileName = req.fileName ?? "input";
  const scope = req.scopeToTenant ? req.tenant : undefined;
  if (req.scopeToTenant && scope === undefined) throw new JobError("scopeToTenant: the job needs a tenant");
  const priority = req.priority ?? "normal";
  if (!JOB_PRIORITIES.includes(priority)) throw new JobError(`priority: must be high, normal or low, got ${priority}`);
  // Bytes: a line over the line limit or not UTF-8 is refused naming its line (issue 13).
  const input = parseBatchInput(fileName, req.input, req.format ?? "auto", {
    ...(req.maxLineBytes !== undefined ? { maxLineBytes: req.maxLineBytes } : {}),
  });
  req.check?.(input, req.input.byteLength);
  const existing = scope === undefined ? await getJob(h, id) : await findJob(h, scope, id);
  if (existing) return { job: await publishIfNeeded(h, existing), created: false };
  if (req.quota) {
    if (req.tenant === undefined) throw new JobError("quota: the job needs a tenant");
    await checkQuota(h, req.tenant, req.quota, req.input.byteLength);
  }
  const inputObject = `${scope === undefined ? id : tenantJobKey(scope, id)}/input-${nonce()}.jsonl`;
  await h.obj.putBlob({ name: inputObject }, req.input);
  const t = now();
  const state: JobState = {
    id,
    ...(req.tenant !== undefined ? { tenant: req.tenant } : {}),
    priority,
    format: input.format,
    ...(req.model ? { model: req.model } : {}),
    ...(req.tokenizer ? { tokenizer: req.tokenizer } : {}),
    // A seed fixed now keeps a resumed job's sampling identical.
    sampling: { ...req.sampling, seed: req.sampling?.seed ?? 1 + (randomBytes(4).readUInt32BE() % (2 ** 31 - 1)) },
    status: "queued",
    inputObject,
    fileName,
    inputBytes: req.input.byteLength,
    promptsTotal: input.prompts.length,
    promptsDone: 0,
    promptsFailed: 0,
    promptTokens: 0,
    completionTokens: 0,
    doneIds: [],
    chunks: [],
    attempts: 0,
    submittedAt: t,
    updatedAt: t,
  };
  // Written nothing (ObjectStore.delete writes a "deleted" meta first): works in a full store too.
  const dropInput = () => deleteObject(h, inputObject).catch(() => undefined);
  // The id itself when free; a tenant's job whose id another's job holds goes under its tenant's key.
  for (const key of scope === undefined ? [id] : [id, tenantJobKey(scope, id)]) {
    const mine = { ...state, id: key };
    try {
      await h.kv.create(key, encodeState(mine));
    } catch (err) {
      const other = await getJob(h, key);
      if (!other) {
        await dropInput();
        throw err;
      }
      if (scope === undefined || other.tenant === scope) {
        // Lost a race with a submit of the same id: theirs is the job.
        await dropInput();
        return { job: await publishIfNeeded(h, other), created: false };
      }
      continue;
    }
    try {
      return { job: await publishIfNeeded(h, mine), created: true };
    } catch (err) {
      // Refused for want of room: nothing was queued, so nothing is kept (a timeout may have queued it).
      if (isStoreFull(err)) {
        await dropInput();
        await deleteState(h, key).catch(() => undefined);
      }
      throw err;
    }
  }
  // Not reached: the tenant's key is its own.
  await dropInput();
  throw new JobError(`job "${id}": its key is held by another tenant's job`, { rpcCode: 10 }); // ABORTED
}

/** Publishes queued job `s` unless its message was (a second publish of its id is dropped); records its stream sequence. */
async function publishIfNeeded(h: JobHandles, s: JobState): Promise<JobState> {
  if (s.status !== "queued" || s.streamSeq !== undefined) return s;
  // msgID: JetStream drops a second publish of the same id within its duplicate window.
  const ack = await h.js.publish(h.names.subject(s.priority), enc.encode(JSON.stringify({ id: s.id })), {
    msgID: s.id,
    ...traceHeaders(),
  });
  return (
    (await updateJob(h, s.id, (cur) => (cur.streamSeq === undefined ? { ...cur, streamSeq: ack.seq } : undefined))) ?? s
  );
}
