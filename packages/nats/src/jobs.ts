/**
 * Batch jobs over NATS JetStream (issue 5): a job's input and results live
 * in an object store, its state (status, progress, checkpoint) in a
 * key-value bucket, and pending jobs in a work-queue stream, one subject per
 * priority. Every name comes from {@link jobNames}, so tests isolate
 * themselves with their own prefix.
 *
 * Exactly-once results: a worker writes each chunk of result lines to an
 * object whose name carries its claim (`owner`) and only then records the
 * chunk in the job state with a compare-and-set on the entry's revision,
 * checking it still owns the job. Results are read from the recorded chunks
 * only, so a chunk written by a worker that died (or lost the job) before
 * recording it is never read, and its prompts are run again by whoever
 * resumes the job.
 */
import { randomBytes } from "node:crypto";
import { headers, nanos, type MsgHdrs, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { context, propagation, ROOT_CONTEXT, SpanKind, trace, type Context } from "@opentelemetry/api";
import {
  AckPolicy,
  DeliverPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type Consumer,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { Base64UrlPaddedCodec, Objm, type ObjectStore } from "@nats-io/obj";
import { parseBatchInput, type BatchFormat, type BatchInput } from "@tessera/core";
import { endSpanWhen } from "@tessera/proto";
import { DEFAULT_NATS_PREFIX } from "./connection.js";
import {
  JobError,
  JobNotFoundError,
  JobOwnershipLostError,
  JobStoreFullError,
  QuotaExceededError,
  isCasMismatch,
  isStoreFull,
} from "./job-errors.js";

export {
  JobError,
  JobNotFoundError,
  JobOwnershipLostError,
  JobStoreFullError,
  QuotaExceededError,
  isStoreFull,
  type QuotaKind,
} from "./job-errors.js";

/** Job priorities, highest first: a worker takes every pending high job before a normal one. */
export const JOB_PRIORITIES = ["high", "normal", "low"] as const;
/** A job's priority. */
export type JobPriority = (typeof JOB_PRIORITIES)[number];

/** Where a job is: queued → running → completed | failed | cancelled (a queued job may go straight to cancelled). */
export type JobStatus = "queued" | "running" | "completed" | "failed" | "cancelled";

/** Whether a job has ended (no worker will run it again). */
export const isTerminal = (s: JobStatus): boolean => s === "completed" || s === "failed" || s === "cancelled";

/** Job-wide sampling; a prompt's own fields override it. Proto defaults apply to what is unset. */
export interface JobSampling {
  /** Most tokens generated per prompt. */
  maxTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  /** Fixed at submit when not given, so a resumed job samples the same tokens. */
  seed?: number;
}

/** The job-state entry (JSON in the `${prefix}-job-state` bucket, key = `id`). */
export interface JobState {
  /**
   * The job's key: its job id, or `<tenant>/<job id>` ({@link tenantJobKey})
   * for a tenant's job whose id another job held when it was submitted. What
   * workers, operators and admins address the job by; a tenant knows it by
   * {@link ownJobId}.
   */
  id: string;
  tenant?: string;
  priority: JobPriority;
  /** Format of the input, and so of the results. */
  format: BatchFormat;
  /** Checkpoint/tokenizer paths on the cluster; unset = the coordinator's defaults. */
  model?: string;
  tokenizer?: string;
  sampling: JobSampling;
  status: JobStatus;
  /** Object holding the input file. */
  inputObject: string;
  /** Name the input file was submitted under (for messages). */
  fileName: string;
  inputBytes: number;
  /** Bytes of the recorded result chunks (unset: none, or stored before issue 13). */
  resultBytes?: number;
  promptsTotal: number;
  /** Prompts whose results are stored (= doneIds.length). */
  promptsDone: number;
  /** Of those, prompts that failed (an error result). */
  promptsFailed: number;
  /** Prompt tokens (BOS included) and generated tokens of the stored results. */
  promptTokens: number;
  completionTokens: number;
  /** Checkpoint: ids of the prompts whose results are stored. */
  doneIds: string[];
  /** Checkpoint: the result chunk objects, in order. */
  chunks: string[];
  /** Set by cancel() while a worker runs the job; the worker stops it. */
  cancelRequested?: boolean;
  /** Why the job failed. */
  error?: string;
  /** Times a worker claimed the job. */
  attempts: number;
  /** The current claim (worker name + nonce). */
  owner?: string;
  /** Work-queue stream sequence of the job's message. */
  streamSeq?: number;
  /** ISO-8601 times. */
  submittedAt: string;
  startedAt?: string;
  finishedAt?: string;
  updatedAt: string;
}

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

const nonce = (bytes = 6) => randomBytes(bytes).toString("hex");
const now = () => new Date().toISOString();
const enc = new TextEncoder();
const dec = new TextDecoder();
const encodeState = (s: JobState) => enc.encode(JSON.stringify(s));

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

/**
 * The job key an object of the data bucket belongs to: `<key>/input-<hex>.jsonl`
 * (its input) or `<key>/results/<6 digits>-<owner>.jsonl` (a result chunk);
 * undefined for any other name.
 */
export function jobKeyOfObject(name: string): string | undefined {
  return /^(.+)\/(?:input-[0-9a-f]+|results\/[0-9]{6}-[^/]+)\.jsonl$/.exec(name)?.[1];
}

/** What {@link JobStore.submit} returns. */
export interface SubmitJobResult {
  job: JobState;
  /** False when a job with this id existed already (nothing was stored). */
  created: boolean;
}

/** A job message a worker pulled; it must `ack()` once results are stored, or `nak()` to hand it back. */
export interface JobDelivery {
  jobId: string;
  priority: JobPriority;
  /** 1 on the first delivery, more when redelivered (a worker died or handed it back). */
  deliveryCount: number;
  /** Resets the ack wait: call well within it while the job runs. */
  working(): void;
  ack(): Promise<void>;
  /** Hands the job back for redelivery after `delayMs`. */
  nak(delayMs?: number): void;
  /**
   * Trace context to run the job under: a "tessera.job.queue" span (from
   * the publish to this delivery) under the submitter's span, whose context
   * the job message carried in its headers (W3C traceparent). ROOT when the
   * message carried none or tracing is off.
   */
  traceContext: Context;
}

/** A claim on a job ({@link JobStore.claim}): run it, or skip it (and ack) with the reason. */
export type JobClaim = { kind: "run"; state: JobState; owner: string } | { kind: "skip"; reason: string };

/** One stored result line of a chunk. */
export interface StoredResult {
  promptId: string;
  /** The output line in the job's format (one JSON object, no newline). */
  line: string;
  promptTokens: number;
  completionTokens: number;
  failed: boolean;
}

/** Options of {@link JobStore.open}. */
export interface JobStoreOptions {
  /** @default "tessera" */
  prefix?: string;
}

const CAS_TRIES = 20;

/**
 * The job queue over JetStream. `open` declares the stream and buckets
 * (idempotent). Submitters use submit/list/get/results/cancel/watch;
 * workers use ensureConsumers/nextJob/claim/readInput/storeResults/finish.
 * The connection stays the caller's to close.
 */
export class JobStore {
  private consumers = new Map<JobPriority, Consumer>();

  private constructor(
    readonly nc: NatsConnection,
    readonly names: JobNames,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly kv: KV,
    private readonly obj: ObjectStore,
  ) {}

  /**
   * Declares (or binds to) the work-queue stream, the job-state bucket and
   * the object store under the prefix.
   * @throws JobError for a bad prefix; NATS errors when JetStream is off.
   */
  static async open(nc: NatsConnection, options: JobStoreOptions = {}): Promise<JobStore> {
    const names = jobNames(options.prefix);
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const config = {
      name: names.stream,
      subjects: JOB_PRIORITIES.map(names.subject),
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
    };
    try {
      await jsm.streams.add(config);
    } catch (err) {
      // Declared already (maybe with other limits): use it as it is.
      await jsm.streams.info(names.stream).catch(() => {
        throw err;
      });
    }
    const kv = await new Kvm(js).create(names.stateBucket, { history: 1 });
    const obj = await new Objm(js).create(names.dataBucket);
    return new JobStore(nc, names, js, jsm, kv, obj);
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
    return tracer.startActiveSpan("tessera.job.submit", { kind: SpanKind.PRODUCER }, (span) =>
      endSpanWhen(span, this.submitUntraced(req), (r) =>
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

  private async submitUntraced(req: SubmitJobRequest): Promise<SubmitJobResult> {
    const id = checkJobId(req.jobId ?? `job_${nonce(8)}`);
    try {
      return await this.submitChecked(req, id);
    } catch (err) {
      // A full store (the server's max_file_store, a stream's max_bytes): RESOURCE_EXHAUSTED, said so.
      if (isStoreFull(err) && !(err instanceof JobStoreFullError)) throw new JobStoreFullError(`job "${id}"`, err);
      throw err;
    }
  }

  private async submitChecked(req: SubmitJobRequest, id: string): Promise<SubmitJobResult> {
    const fileName = req.fileName ?? "input";
    const scope = req.scopeToTenant ? req.tenant : undefined;
    if (req.scopeToTenant && scope === undefined) throw new JobError("scopeToTenant: the job needs a tenant");
    const priority = req.priority ?? "normal";
    if (!JOB_PRIORITIES.includes(priority))
      throw new JobError(`priority: must be high, normal or low, got ${priority}`);
    // Bytes: a line over the line limit or not UTF-8 is refused naming its line (issue 13).
    const input = parseBatchInput(fileName, req.input, req.format ?? "auto", {
      ...(req.maxLineBytes !== undefined ? { maxLineBytes: req.maxLineBytes } : {}),
    });
    req.check?.(input, req.input.byteLength);
    const existing = scope === undefined ? await this.get(id) : await this.find(scope, id);
    if (existing) return { job: await this.publishIfNeeded(existing), created: false };
    if (req.quota) {
      if (req.tenant === undefined) throw new JobError("quota: the job needs a tenant");
      await this.checkQuota(req.tenant, req.quota, req.input.byteLength);
    }
    const inputObject = `${scope === undefined ? id : tenantJobKey(scope, id)}/input-${nonce()}.jsonl`;
    await this.obj.putBlob({ name: inputObject }, req.input);
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
    const dropInput = () => this.deleteObject(inputObject).catch(() => undefined);
    // The id itself when free; a tenant's job whose id another's job holds goes under its tenant's key.
    for (const key of scope === undefined ? [id] : [id, tenantJobKey(scope, id)]) {
      const mine = { ...state, id: key };
      try {
        await this.kv.create(key, encodeState(mine));
      } catch (err) {
        const other = await this.get(key);
        if (!other) {
          await dropInput();
          throw err;
        }
        if (scope === undefined || other.tenant === scope) {
          // Lost a race with a submit of the same id: theirs is the job.
          await dropInput();
          return { job: await this.publishIfNeeded(other), created: false };
        }
        continue;
      }
      try {
        return { job: await this.publishIfNeeded(mine), created: true };
      } catch (err) {
        // Refused for want of room: nothing was queued, so nothing is kept (a timeout may have queued it).
        if (isStoreFull(err)) {
          await dropInput();
          await this.deleteState(key).catch(() => undefined);
        }
        throw err;
      }
    }
    // Not reached: the tenant's key is its own.
    await dropInput();
    throw new JobError(`job "${id}": its key is held by another tenant's job`, { rpcCode: 10 }); // ABORTED
  }

  private async publishIfNeeded(s: JobState): Promise<JobState> {
    if (s.status !== "queued" || s.streamSeq !== undefined) return s;
    // msgID: JetStream drops a second publish of the same id within its duplicate window.
    const ack = await this.js.publish(this.names.subject(s.priority), enc.encode(JSON.stringify({ id: s.id })), {
      msgID: s.id,
      ...traceHeaders(),
    });
    return (
      (await this.update(s.id, (cur) => (cur.streamSeq === undefined ? { ...cur, streamSeq: ack.seq } : undefined))) ??
      s
    );
  }

  /**
   * @throws QuotaExceededError when tenant `tenant`'s jobs with one more of
   *   `inputBytes` would pass `quota` (its unfinished jobs first, then bytes).
   */
  private async checkQuota(tenant: string, quota: TenantQuota, inputBytes: number): Promise<void> {
    const usage = await this.usage(tenant);
    if (usage.jobs + 1 > quota.maxJobs) throw new QuotaExceededError(tenant, "jobs", usage.jobs, quota.maxJobs, 1);
    if (usage.bytes + inputBytes > quota.maxBytes)
      throw new QuotaExceededError(tenant, "bytes", usage.bytes, quota.maxBytes, inputBytes);
  }

  /**
   * What tenant `tenant`'s jobs hold now, computed from their states (so it
   * survives any restart and never drifts): inputs plus recorded results,
   * and jobs not yet ended. One scan of every job state ({@link list}).
   */
  async usage(tenant: string): Promise<TenantUsage> {
    let bytes = 0;
    let jobs = 0;
    for (const s of await this.list({ tenant })) {
      bytes += s.inputBytes + (s.resultBytes ?? 0);
      if (!isTerminal(s.status)) jobs++;
    }
    return { bytes, jobs };
  }

  /** The job's state, or undefined when there is none. */
  async get(id: string): Promise<JobState | undefined> {
    return (await this.getEntry(id))?.state;
  }

  /**
   * Tenant `tenant`'s job `id` (see {@link SubmitJobRequest.scopeToTenant}):
   * the one under {@link tenantJobKey}, else the one under `id` when it is
   * the tenant's; another tenant's job of that id is not found.
   */
  async find(tenant: string, id: string): Promise<JobState | undefined> {
    const scoped = await this.get(tenantJobKey(tenant, id));
    if (scoped) return scoped;
    const plain = await this.get(id);
    return plain?.tenant === tenant ? plain : undefined;
  }

  private async getEntry(id: string): Promise<{ state: JobState; revision: number } | undefined> {
    const e = await this.kv.get(id);
    if (!e || e.operation !== "PUT" || e.length === 0) return undefined;
    return { state: JSON.parse(dec.decode(e.value)) as JobState, revision: e.revision };
  }

  /**
   * Every job (oldest submitted first), optionally only one tenant's.
   * One ordered consumer over the state bucket's last values (not a
   * request per job: quotas read every job at each submit).
   */
  async list(filter: { tenant?: string } = {}): Promise<JobState[]> {
    const states = (await this.allStates()).filter((s) => filter.tenant === undefined || s.tenant === filter.tenant);
    return states.sort((a, b) => a.submittedAt.localeCompare(b.submittedAt) || a.id.localeCompare(b.id));
  }

  /** The last value of every key of the state bucket, deleted keys left out. */
  private async allStates(): Promise<JobState[]> {
    const bucket = this.names.stateBucket;
    const c = await this.js.consumers.get(`KV_${bucket}`, {
      filter_subjects: `$KV.${bucket}.>`,
      deliver_policy: DeliverPolicy.LastPerSubject,
    });
    const states: JobState[] = [];
    if ((await c.info(true)).num_pending === 0) return states;
    const msgs = await c.consume();
    try {
      for await (const m of msgs) {
        const op = m.headers?.get("KV-Operation");
        if (op !== "DEL" && op !== "PURGE" && m.data.length > 0)
          states.push(JSON.parse(dec.decode(m.data)) as JobState);
        if (m.info.pending === 0) break;
      }
    } finally {
      await msgs.close();
    }
    return states;
  }

  /**
   * Compare-and-set on the job's state: `mutate` gets the current state and
   * returns the new one, or undefined to leave it. Retried on a concurrent
   * change.
   * @returns the state written, or undefined when `mutate` left it.
   * @throws JobNotFoundError; whatever `mutate` throws.
   */
  async update(id: string, mutate: (s: JobState) => JobState | undefined): Promise<JobState | undefined> {
    for (let i = 0; ; i++) {
      const cur = await this.getEntry(id);
      if (!cur) throw new JobNotFoundError(id);
      const next = mutate(cur.state);
      if (!next) return undefined;
      next.updatedAt = now();
      try {
        await this.kv.update(id, encodeState(next), cur.revision);
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
   * Cancels a job: a queued one becomes "cancelled" at once (and its message
   * is removed); a running one gets `cancelRequested` and its worker stops
   * it and marks it "cancelled". An ended job is left as it is.
   * @returns the state after the change.
   * @throws JobNotFoundError
   */
  async cancel(id: string): Promise<JobState> {
    const after = await this.update(id, (s) => {
      if (isTerminal(s.status) || s.cancelRequested) return undefined;
      if (s.status === "queued") return { ...s, status: "cancelled", finishedAt: now() };
      return { ...s, cancelRequested: true };
    });
    if (after?.status === "cancelled" && after.streamSeq !== undefined) {
      await this.jsm.streams.deleteMessage(this.names.stream, after.streamSeq).catch(() => false);
    }
    return after ?? (await this.get(id))!;
  }

  /**
   * The job's state now and at every change, ending after it reaches an
   * end state (or when `signal` aborts). Backed by a KV watch of the key.
   * @throws JobNotFoundError when there is no such job.
   */
  async *watch(id: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<JobState> {
    if (!(await this.get(id))) throw new JobNotFoundError(id);
    const w = await this.kv.watch({ key: id });
    const stop = () => w.stop();
    options.signal?.addEventListener("abort", stop, { once: true });
    try {
      for await (const e of w) {
        if (e.operation !== "PUT") continue;
        const s = JSON.parse(dec.decode(e.value)) as JobState;
        yield s;
        if (isTerminal(s.status)) return;
      }
    } finally {
      options.signal?.removeEventListener("abort", stop);
      w.stop();
    }
  }

  /**
   * The job's result lines (one JSON object each, no newline) in the order
   * they were stored. With `follow`, keeps yielding as chunks are stored
   * until the job ends.
   * @throws JobNotFoundError
   */
  async *results(id: string, options: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<string> {
    let next = 0;
    const chunksOf = async function* (this: JobStore, s: JobState) {
      for (; next < s.chunks.length; next++) yield* await this.readChunk(s.chunks[next]!);
    }.bind(this);
    if (!options.follow) {
      const s = await this.get(id);
      if (!s) throw new JobNotFoundError(id);
      yield* chunksOf(s);
      return;
    }
    for await (const s of this.watch(id, options)) yield* chunksOf(s);
  }

  private async readChunk(name: string): Promise<string[]> {
    const data = await this.obj.getBlob(name);
    if (!data) throw new JobError(`result chunk ${name} is missing from ${this.names.dataBucket}`);
    return dec
      .decode(data)
      .split("\n")
      .filter((l) => l !== "");
  }

  // ---- worker side ----

  /**
   * Declares the durable pull consumers (one per priority). `ackWaitMs`:
   * how long a job may go without `working()` before JetStream redelivers
   * it to another worker; applied when the consumers are created or updated.
   */
  async ensureConsumers(ackWaitMs: number): Promise<void> {
    for (const p of JOB_PRIORITIES) {
      const config = {
        durable_name: this.names.consumer(p),
        filter_subject: this.names.subject(p),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: nanos(ackWaitMs),
        max_deliver: -1,
      };
      try {
        await this.jsm.consumers.add(this.names.stream, config);
      } catch {
        await this.jsm.consumers.update(this.names.stream, config.durable_name, { ack_wait: config.ack_wait });
      }
      this.consumers.set(p, await this.js.consumers.get(this.names.stream, config.durable_name));
    }
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
    if (this.consumers.size === 0) throw new JobError("nextJob: call ensureConsumers() first");
    let wake: (() => void) | undefined;
    const sub: Subscription = this.nc.subscribe(this.names.subjects, {
      callback: () => wake?.(),
    });
    try {
      while (!signal.aborted) {
        for (const p of JOB_PRIORITIES) {
          if (signal.aborted) return undefined;
          if (!priorities.includes(p)) continue;
          const info = await this.jsm.consumers.info(this.names.stream, this.names.consumer(p));
          if (info.num_pending + info.num_ack_pending === 0) continue;
          const m = await this.consumers.get(p)!.next({ expires: 1000 });
          if (m) return delivery(m, p);
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, pollMs);
          function done() {
            clearTimeout(t);
            signal.removeEventListener("abort", done);
            wake = undefined;
            resolve();
          }
          wake = done;
          signal.addEventListener("abort", done, { once: true });
        });
      }
      return undefined;
    } finally {
      sub.unsubscribe();
    }
  }

  /**
   * Claims a pulled job for `worker`: a queued job, or a running one whose
   * earlier claim was redelivered (its worker died), becomes "running" with
   * a new owner. A job that ended, or was cancelled while queued, is skipped
   * (ack it); a cancel requested before the claim ends it as "cancelled".
   * @throws JobNotFoundError (ack the message: there is nothing to run).
   */
  async claim(jobId: string, worker: string): Promise<JobClaim> {
    const owner = `${worker}-${nonce()}`;
    let reason = "";
    const s = await this.update(jobId, (cur) => {
      if (isTerminal(cur.status)) {
        reason = `already ${cur.status}`;
        return undefined;
      }
      if (cur.cancelRequested) {
        reason = "cancelled before it ran";
        return { ...cur, status: "cancelled", finishedAt: now() };
      }
      const t = now();
      return { ...cur, status: "running", owner, attempts: cur.attempts + 1, startedAt: cur.startedAt ?? t };
    });
    return s?.status === "running" ? { kind: "run", state: s, owner } : { kind: "skip", reason };
  }

  /**
   * Reads and parses a job's input.
   * @throws JobError when the object is missing; InputFileError (cannot happen for a submitted job).
   */
  async readInput(s: JobState): Promise<BatchInput> {
    const data = await this.obj.getBlob(s.inputObject);
    if (!data) throw new JobError(`job "${s.id}": input ${s.inputObject} is missing from ${this.names.dataBucket}`);
    // Checked when it was submitted: no line limit again (it may have been submitted under a larger one).
    return parseBatchInput(s.fileName, data, s.format, { maxLineBytes: Number.MAX_SAFE_INTEGER });
  }

  /**
   * Stores a chunk of results and checkpoints them: writes the chunk object
   * (named after the claim), then records it, the prompt ids and the token
   * counts in the job state, if `owner` still holds the job.
   * @returns the state written.
   * @throws JobOwnershipLostError when another claim holds the job (stop running it).
   */
  async storeResults(jobId: string, owner: string, results: readonly StoredResult[]): Promise<JobState> {
    const cur = await this.get(jobId);
    if (!cur) throw new JobNotFoundError(jobId);
    if (cur.owner !== owner) throw new JobOwnershipLostError(jobId, owner, cur.owner);
    if (results.length === 0) return cur;
    const name = `${jobId}/results/${String(cur.chunks.length).padStart(6, "0")}-${owner}.jsonl`;
    const data = enc.encode(results.map((r) => r.line + "\n").join(""));
    try {
      await this.obj.putBlob({ name }, data);
    } catch (err) {
      if (isStoreFull(err)) throw new JobStoreFullError(`job "${jobId}": storing ${results.length} results`, err);
      throw err;
    }
    const s = await this.update(jobId, (s) => {
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
    return s ?? (await this.get(jobId))!;
  }

  /**
   * Ends a claimed job: "completed", "failed" (with `error`) or "cancelled".
   * @throws JobOwnershipLostError when another claim holds the job.
   */
  async finish(jobId: string, owner: string, status: "completed" | "failed" | "cancelled", error?: string) {
    return (await this.update(jobId, (s) => {
      if (s.owner !== owner) throw new JobOwnershipLostError(jobId, owner, s.owner);
      return { ...s, status, finishedAt: now(), ...(error !== undefined ? { error } : {}) };
    }))!;
  }

  /**
   * Deletes job `id`: its input and result objects (those recorded, and any
   * chunk a worker wrote but never recorded), then its state, so that a
   * full store gets room before the state's delete marker is written. An
   * unfinished job is cancelled first; a running one is waited for (its
   * worker stops it at its next step) up to `waitMs`, then deleted all the
   * same (a worker that still runs it finds no state and stops); in a full
   * store, where the cancel cannot be written, it is deleted at once. Its
   * queue message, if any is left, is removed too.
   * Idempotent: deleting it again, or a job deleted meanwhile, answers
   * undefined.
   * @returns the job's last state, or undefined when there was none.
   */
  async delete(id: string, options: { waitMs?: number } = {}): Promise<JobState | undefined> {
    let s = await this.get(id);
    if (!s) return undefined;
    let cancelled = true;
    if (!isTerminal(s.status)) {
      s = await this.cancel(id).catch((err: unknown) => {
        if (!isStoreFull(err)) throw err;
        cancelled = false;
        return s!;
      });
      if (cancelled && !isTerminal(s.status)) {
        const signal = AbortSignal.timeout(options.waitMs ?? JOB_DELETE_WAIT_MS);
        try {
          for await (const cur of this.watch(id, { signal })) s = cur;
        } catch (err) {
          if (!(err instanceof JobNotFoundError)) throw err;
        }
      }
    }
    const names = new Set([s.inputObject, ...s.chunks]);
    for (const o of await this.objects()) if (jobKeyOfObject(o.name) === id) names.add(o.name);
    for (const name of names) await this.deleteObject(name);
    if (s.streamSeq !== undefined)
      await this.jsm.streams.deleteMessage(this.names.stream, s.streamSeq).catch(() => false);
    // The key's messages deleted: no delete marker is written (a full store has no room for one).
    await this.deleteState(id);
    return s;
  }

  /** Every object of the data bucket (inputs and result chunks), for sweeps. O(objects). */
  async objects(): Promise<JobObject[]> {
    return (await this.obj.list())
      .filter((o) => !o.deleted)
      .map((o) => ({ name: o.name, size: o.size, mtimeMs: Date.parse(o.mtime) }));
  }

  /**
   * Deletes one object of the data bucket; a missing one is no error. Its
   * chunks' and its meta's messages are deleted (ObjectStore.delete would
   * first write a "deleted" meta, which a full store refuses).
   */
  async deleteObject(name: string): Promise<void> {
    const info = await this.obj.info(name);
    if (!info) return;
    const stream = `OBJ_${this.names.dataBucket}`;
    await this.deleteSubject(stream, `$O.${this.names.dataBucket}.C.${info.nuid}`);
    await this.deleteSubject(stream, `$O.${this.names.dataBucket}.M.${Base64UrlPaddedCodec.encode(name)}`);
  }

  /** Deletes key `key`'s messages from the state bucket, writing no delete marker. */
  private deleteState(key: string): Promise<void> {
    return this.deleteSubject(`KV_${this.names.stateBucket}`, `$KV.${this.names.stateBucket}.${key}`);
  }

  /**
   * Deletes every message of `subject` in `stream`, one by one, last first
   * (an object's chunks: 1 per 128 KiB). Not a filtered purge: nats-server
   * 2.9 does not take a filtered purge off the account's storage in use, so
   * a full store would stay full.
   */
  private async deleteSubject(stream: string, subject: string): Promise<void> {
    for (;;) {
      const m = await this.jsm.streams.getMessage(stream, { last_by_subj: subject });
      if (!m) return;
      await this.jsm.streams.deleteMessage(stream, m.seq, false);
    }
  }

  /**
   * Deletes the stream, the consumers and both buckets of this prefix
   * (tests clean up with it).
   */
  async destroy(): Promise<void> {
    await this.jsm.streams.delete(this.names.stream).catch(() => false);
    await this.kv.destroy().catch(() => false);
    await this.obj.destroy().catch(() => false);
  }
}

const tracer = trace.getTracer("@tessera/nats");

/** The active trace context as NATS headers (`traceparent`, ...); none when no span is active. */
function traceHeaders(): { headers?: MsgHdrs } {
  const ctx = context.active();
  if (!trace.getSpan(ctx)) return {};
  const h = headers();
  propagation.inject(ctx, h, { set: (carrier, key, value) => carrier.set(key, value) });
  return { headers: h };
}

/**
 * The context a job message carried, with a "tessera.job.queue" span from
 * its publish time to now under it (the time the job waited in the queue).
 */
function deliveryContext(m: JsMsg, jobId: string, priority: JobPriority): Context {
  const h = m.headers;
  if (!h || !h.has("traceparent")) return ROOT_CONTEXT;
  const parent = propagation.extract(ROOT_CONTEXT, h, {
    keys: (c) => c.keys(),
    get: (c, key) => (c.has(key) ? c.get(key) : undefined),
  });
  if (!trace.getSpan(parent)) return parent;
  const published = Math.floor(Number(m.info.timestampNanos) / 1e6);
  const span = tracer.startSpan(
    "tessera.job.queue",
    {
      kind: SpanKind.CONSUMER,
      startTime: published,
      attributes: {
        "messaging.system": "nats",
        "messaging.destination.name": m.subject,
        "tessera.job_id": jobId,
        "tessera.job.priority": priority,
        "tessera.job.delivery_count": m.info.deliveryCount,
        "tessera.job.queue_ms": Math.max(0, Date.now() - published),
      },
    },
    parent,
  );
  span.end();
  return trace.setSpan(parent, span);
}

function delivery(m: JsMsg, priority: JobPriority): JobDelivery {
  const { id } = JSON.parse(dec.decode(m.data)) as { id: string };
  return {
    jobId: id,
    priority,
    traceContext: deliveryContext(m, id, priority),
    deliveryCount: m.info.deliveryCount,
    working: () => m.working(),
    ack: async () => {
      await m.ackAck();
    },
    nak: (delayMs) => m.nak(delayMs),
  };
}
