/**
 * The batch-job RPCs of `tessera.v1.Coordinator` (issue 5): SubmitJob,
 * ListJobs, GetJob, GetResults, CancelJob, WatchJob and DeleteJob, served from the
 * NATS job queue of @tessera/nats ({@link JobStore}) under the
 * coordinator's `natsPrefix` — the same queue the CLI's job commands use and
 * the job worker pulls from. The store is opened on its own NATS connection
 * at the first job RPC (so a coordinator that never serves one declares no
 * job stream or buckets) and closed with the coordinator.
 */
import { once, type EventEmitter } from "node:events";
import {
  Code,
  Coordinator,
  RpcError,
  type Metadata,
  type JobSchema,
  type MessageInitShape,
  type SamplingParams,
  type SubmitJobRequest,
  type ServiceImpl,
} from "@tessera/proto";
import {
  JOB_PRIORITIES,
  JobStore,
  checkJobId,
  checkJobKey,
  connectNats,
  ownJobId,
  redactNatsServers,
  type JobPriority,
  type JobSampling,
  type JobState,
} from "@tessera/nats";
import { resolveServedModel, type ServedModel } from "../served-models.js";
import { checkBatchLimits, maxLineBytesOf, type GenerateLimits } from "./limits.js";
import { checkPriorityAllowed, maySee, submitTenant, type Identity } from "./auth.js";
import { createKeyedLock } from "./tenant-lock.js";

/** The job RPCs' part of the Coordinator service implementation. */
export type JobRpcs = Pick<
  ServiceImpl<typeof Coordinator>,
  "submitJob" | "listJobs" | "getJob" | "getResults" | "cancelJob" | "watchJob" | "deleteJob"
>;

/** What {@link createJobService} needs of the coordinator's options. */
export interface JobServiceOptions {
  /** NATS servers; undefined: every job RPC fails FAILED_PRECONDITION. */
  nats: string | undefined;
  natsPrefix: string;
  /** Checked against every submitted job before it is stored. */
  limits: GenerateLimits;
  /** A tenant's quota (issue 13): bytes its jobs store, and its jobs queued or running. Admins are not limited. */
  tenantMaxBytes: number;
  tenantMaxJobs: number;
  /** How long an ended job is kept (the job worker's sweep deletes it after), in ms: a Job's `expires_at`. */
  jobRetentionMs: number;
  /**
   * The served models: a job's model_path / tokenizer_path must name one
   * (checked at submit; the coordinator that runs it checks again).
   * Empty: not checked here.
   */
  models: readonly ServedModel[];
  log: (line: string) => void;
  /**
   * The caller of a call (its bearer token's tenant; see auth.ts). A tenant
   * submits, lists, reads, watches and cancels only its own jobs, by its own
   * job ids (another tenant may use the same ids); another tenant's job is
   * NOT_FOUND, as an id nobody uses.
   * @throws RpcError UNAUTHENTICATED
   */
  identify: (metadata: Metadata) => Identity;
}

type NatsConnection = JobStore["nc"];
/** The server side of a server-streaming call (what `write` needs of it). */
interface WritableCall<T> {
  write(message: T): boolean;
  once(event: "drain", fn: () => void): unknown;
}

/** The job RPCs and their lifecycle. */
export interface JobService {
  readonly rpcs: JobRpcs;
  /** Ends every open WatchJob / GetResults stream with UNAVAILABLE (the coordinator is stopping). */
  drain(): void;
  /** drain(), then closes the NATS connection; later calls fail UNAVAILABLE. Idempotent. */
  close(): Promise<void>;
}

/**
 * A job's state as the wire's `tessera.v1.Job` (unset times and strings
 * empty, unset sampling 0). `forTenant`: the id is the tenant's own
 * ({@link ownJobId}), else the job's key (what admins address it by).
 * `retentionMs`: how long an ended job is kept (`expires_at`; unset: empty).
 */
export function jobMessage(s: JobState, forTenant = false, retentionMs?: number): MessageInitShape<typeof JobSchema> {
  const ended = s.finishedAt === undefined ? NaN : Date.parse(s.finishedAt);
  return {
    id: forTenant ? ownJobId(s) : s.id,
    tenant: s.tenant ?? "",
    priority: s.priority,
    format: s.format,
    status: s.status,
    promptsTotal: s.promptsTotal,
    promptsDone: s.promptsDone,
    promptsFailed: s.promptsFailed,
    promptTokens: BigInt(s.promptTokens),
    completionTokens: BigInt(s.completionTokens),
    submittedAt: s.submittedAt,
    startedAt: s.startedAt ?? "",
    finishedAt: s.finishedAt ?? "",
    error: s.error ?? "",
    attempts: s.attempts,
    cancelRequested: s.cancelRequested ?? false,
    modelPath: s.model ?? "",
    tokenizerPath: s.tokenizer ?? "",
    sampling: {
      maxTokens: s.sampling.maxTokens ?? 0,
      temperature: s.sampling.temperature ?? 0,
      topP: s.sampling.topP ?? 0,
      seed: BigInt(s.sampling.seed ?? 0),
    },
    fileName: s.fileName,
    inputBytes: BigInt(s.inputBytes),
    resultBytes: BigInt(s.resultBytes ?? 0),
    expiresAt: retentionMs === undefined || Number.isNaN(ended) ? "" : new Date(ended + retentionMs).toISOString(),
  };
}

const invalid = (message: string) => new RpcError(Code.INVALID_ARGUMENT, message);

/**
 * A request's SamplingParams as the job's sampling (0 = unset, as Generate reads it).
 * @throws RpcError INVALID_ARGUMENT naming the field: a non-finite or
 *   negative temperature, a top_p that is not finite or above 1, a seed
 *   above 2^53 - 1 (stored as a JSON number).
 */
function jobSampling(p: SamplingParams | undefined): JobSampling {
  if (!p) return {};
  if (!Number.isFinite(p.temperature) || p.temperature < 0)
    throw invalid(`sampling.temperature: must be a finite number >= 0, got ${p.temperature}`);
  if (!Number.isFinite(p.topP) || p.topP < 0 || p.topP > 1)
    throw invalid(`sampling.top_p: must be in [0, 1] (0 = unset), got ${p.topP}`);
  if (p.seed > BigInt(Number.MAX_SAFE_INTEGER))
    throw invalid(`sampling.seed: must be at most ${Number.MAX_SAFE_INTEGER}, got ${p.seed}`);
  return {
    ...(p.maxTokens ? { maxTokens: p.maxTokens } : {}),
    ...(p.temperature ? { temperature: p.temperature } : {}),
    ...(p.topP ? { topP: p.topP } : {}),
    ...(p.seed ? { seed: Number(p.seed) } : {}),
  };
}

/**
 * Writes `message`, waiting for the stream to drain when its buffer is
 * full (a slow reader of a large job's results).
 * @throws RpcError CANCELLED when `signal` aborts while waiting.
 */
async function write<T>(call: WritableCall<T>, message: T, signal: AbortSignal): Promise<void> {
  if (call.write(message)) return;
  try {
    await once(call as unknown as EventEmitter, "drain", { signal });
  } catch (err) {
    throw new RpcError(Code.CANCELLED, "the call was cancelled", { cause: err });
  }
}

/** A streaming call's cancellation, as grpc-js shows it. */
interface CancellableCall {
  on(event: "cancelled", fn: () => void): unknown;
  cancelled: boolean;
}

/**
 * A signal aborted when the client cancels `call` or `shutdown` aborts
 * (the coordinator stops); `stopping()` tells the two apart.
 */
function cancelSignal(call: CancellableCall, shutdown: AbortSignal): AbortSignal {
  const cancelled = new AbortController();
  call.on("cancelled", () => cancelled.abort());
  if (call.cancelled) cancelled.abort();
  return AbortSignal.any([cancelled.signal, shutdown]);
}

/**
 * Runs a job RPC's body: errors that carry a gRPC code (RpcError,
 * JobError, InputFileError, NatsError) keep it; any other (a NATS
 * timeout, a lost connection) becomes UNAVAILABLE naming the servers.
 */
async function guardJobRpc<T>(what: string, nats: string | undefined, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof RpcError || typeof (err as { rpcCode?: unknown }).rpcCode === "number") throw err;
    throw new RpcError(Code.UNAVAILABLE, `${what}: job queue at NATS ${nats}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * `id` checked with `check` (checkJobId, or checkJobKey for an admin's).
 * @throws RpcError INVALID_ARGUMENT naming `field` when it is malformed.
 */
function jobId(id: string, field = "id", check = checkJobId): string {
  try {
    return check(id);
  } catch (err) {
    throw invalid((err as Error).message.replace(/^job id:/, `${field}:`));
  }
}

/**
 * Stores SubmitJob request `req` of `who` as tenant `tenant`'s job: checks
 * the priority (and `who`'s right to it), format, job id and sampling, then
 * (in JobStore.submit, before anything is stored) the coordinator's limits
 * and, for a tenant, its quota.
 * @returns the stored job (or the one that had its id).
 * @throws RpcError INVALID_ARGUMENT / PERMISSION_DENIED naming the field;
 *   QuotaExceededError or JobStoreFullError (RESOURCE_EXHAUSTED); InputFileError.
 */
async function submitRequest(
  s: JobStore,
  req: SubmitJobRequest,
  who: Identity,
  tenant: string | undefined,
  options: JobServiceOptions,
): Promise<JobState> {
  const fileName = req.fileName || "input";
  const priority = (req.priority || "normal") as JobPriority;
  if (!JOB_PRIORITIES.includes(priority))
    throw invalid(`priority: must be high, normal or low, got ${JSON.stringify(req.priority)}`);
  checkPriorityAllowed(who, priority);
  const format = req.format || "auto";
  if (format !== "auto" && format !== "tessera" && format !== "openai")
    throw invalid(`format: must be auto, tessera or openai, got ${JSON.stringify(req.format)}`);
  if (req.jobId) jobId(req.jobId, "job_id");
  const sampling = jobSampling(req.sampling);
  if (options.models.length > 0) resolveServedModel(options.models, req.modelPath, req.tokenizerPath);
  const { job } = await s.submit({
    input: req.input,
    fileName,
    format,
    priority,
    sampling,
    ...(req.jobId ? { jobId: req.jobId } : {}),
    ...(tenant ? { tenant } : {}),
    // A tenant's job ids are its own: another's job of the same id is neither found nor told.
    ...(!who.admin ? { scopeToTenant: true } : {}),
    // A tenant's quota (an admin's submits are not limited): RESOURCE_EXHAUSTED to that tenant only.
    ...(!who.admin && tenant ? { quota: { maxBytes: options.tenantMaxBytes, maxJobs: options.tenantMaxJobs } } : {}),
    ...(req.modelPath ? { model: req.modelPath } : {}),
    ...(req.tokenizerPath ? { tokenizer: req.tokenizerPath } : {}),
    // This coordinator's limits, checked before anything is stored.
    maxLineBytes: maxLineBytesOf(options.limits),
    check: (parsed, bytes) => {
      try {
        checkBatchLimits(parsed, sampling.maxTokens, options.limits, bytes);
      } catch (err) {
        throw invalid(`${fileName}: ${(err as Error).message}`);
      }
    },
  });
  return job;
}

/** Creates the job RPCs for a coordinator with `options`. */
export function createJobService(options: JobServiceOptions): JobService {
  const shutdown = new AbortController();
  // A tenant's submits one at a time (its quota is checked, then its job stored); other tenants' do not wait.
  const tenantLock = createKeyedLock();
  let nc: NatsConnection | undefined;
  let opening: Promise<JobStore> | undefined;

  /**
   * The job store, opened at the first call.
   * @throws RpcError FAILED_PRECONDITION without NATS, UNAVAILABLE after close() or when NATS does not answer.
   */
  const store = (): Promise<JobStore> => {
    const servers = options.nats;
    if (servers === undefined) {
      throw new RpcError(Code.FAILED_PRECONDITION, "the coordinator has no NATS (--nats): it serves no jobs");
    }
    if (shutdown.signal.aborted) throw new RpcError(Code.UNAVAILABLE, "the coordinator is stopping");
    opening ??= (async () => {
      const conn = await connectNats({ servers, name: "tessera-coordinator-jobs" });
      if (shutdown.signal.aborted) {
        await conn.close();
        throw new RpcError(Code.UNAVAILABLE, "the coordinator is stopping");
      }
      nc = conn;
      try {
        return await JobStore.open(conn, { prefix: options.natsPrefix });
      } catch (err) {
        nc = undefined;
        await conn.close().catch(() => undefined);
        throw new RpcError(
          Code.UNAVAILABLE,
          `NATS at ${redactNatsServers(servers)}: cannot open the job queue: ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
    })();
    // A failed open is tried again by the next call.
    opening.catch(() => (opening = undefined));
    return opening;
  };

  const callSignal = (call: CancellableCall) => cancelSignal(call, shutdown.signal);
  const guard = <T>(what: string, fn: () => Promise<T>): Promise<T> => guardJobRpc(what, options.nats, fn);
  /**
   * Job `id`'s state, when the caller may see it: an admin names a job by
   * its key (as ListJobs shows it), a tenant by its own id (JobStore.find).
   * @throws RpcError INVALID_ARGUMENT for a malformed id; NOT_FOUND when
   *   there is no such job or it is another tenant's (not told apart).
   */
  const visible = async (s: JobStore, id: string, who: Identity): Promise<JobState> => {
    const state = who.admin
      ? await s.get(jobId(id, "id", checkJobKey))
      : who.tenant === undefined
        ? undefined
        : await s.find(who.tenant, jobId(id));
    if (!state || !maySee(who, state.tenant)) throw new RpcError(Code.NOT_FOUND, `job ${JSON.stringify(id)} not found`);
    return state;
  };
  /** `s` as the wire's Job, as `who` sees it. */
  const shown = (s: JobState, who: Identity) => jobMessage(s, !who.admin, options.jobRetentionMs);
  const stopping = () => {
    if (shutdown.signal.aborted) throw new RpcError(Code.UNAVAILABLE, "the coordinator is stopping");
  };

  const rpcs: JobRpcs = {
    submitJob: (req, call) =>
      guard("SubmitJob", async () => {
        const who = options.identify(call.metadata);
        const tenant = submitTenant(who, req.tenant);
        const s = await store();
        const submit = () => submitRequest(s, req, who, tenant, options);
        // Quota race (issue 13): two submits of a tenant at once must not both pass its quota.
        const job = !who.admin && tenant ? await tenantLock(tenant, submit) : await submit();
        // The same job id again is idempotent: the caller's own job (an admin's: any).
        return shown(job, who);
      }),

    listJobs: (req, call) =>
      guard("ListJobs", async () => {
        const who = options.identify(call.metadata);
        // A tenant lists its own jobs whatever it asks for; an admin, all or one tenant's.
        const tenant = who.admin ? req.tenant : who.tenant;
        if (!who.admin && (who.tenant === undefined || (req.tenant && req.tenant !== who.tenant))) return { jobs: [] };
        const jobs = await (await store()).list(tenant ? { tenant } : {});
        return { jobs: jobs.map((j) => shown(j, who)) };
      }),

    getJob: (req, call) =>
      guard("GetJob", async () => {
        const who = options.identify(call.metadata);
        return shown(await visible(await store(), req.id, who), who);
      }),

    cancelJob: (req, call) =>
      guard("CancelJob", async () => {
        const who = options.identify(call.metadata);
        const s = await store();
        const state = await visible(s, req.id, who);
        return shown(await s.cancel(state.id), who);
      }),

    deleteJob: (req, call) =>
      guard("DeleteJob", async () => {
        const who = options.identify(call.metadata);
        const s = await store();
        const state = await visible(s, req.id, who);
        // Deleted meanwhile (by its owner again, or the retention sweep): as it was found.
        return shown((await s.delete(state.id)) ?? state, who);
      }),

    getResults: (call) =>
      guard("GetResults", async () => {
        const s = await store();
        const { id } = await visible(s, call.request.id, options.identify(call.metadata));
        const signal = callSignal(call);
        for await (const line of s.results(id, { follow: call.request.follow, signal })) {
          if (signal.aborted) break;
          await write(call, { line }, signal);
        }
        stopping();
      }),

    watchJob: (call) =>
      guard("WatchJob", async () => {
        const who = options.identify(call.metadata);
        const s = await store();
        const { id } = await visible(s, call.request.id, who);
        const signal = callSignal(call);
        for await (const state of s.watch(id, { signal })) {
          if (signal.aborted) break;
          await write(call, shown(state, who), signal);
        }
        stopping();
      }),
  };

  return {
    rpcs,
    drain: () => shutdown.abort(),
    async close() {
      shutdown.abort();
      await opening?.catch(() => undefined);
      const conn = nc;
      nc = undefined;
      await conn?.close().catch((err: unknown) => options.log(`jobs: closing NATS: ${(err as Error).message}`));
    },
  };
}
