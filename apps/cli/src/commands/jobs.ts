/**
 * Batch job commands (issue 5): `tessera submit | jobs | status | results |
 * cancel | watch` and `tessera jobs delete`. With `--cluster` they call a coordinator's job RPCs
 * (SubmitJob, ListJobs, GetJob, GetResults, CancelJob, WatchJob, DeleteJob): the way
 * tenants use it, with a bearer token that limits them to their own jobs.
 * Without it they talk to NATS JetStream directly (the job queue of
 * @tessera/nats): the operators' way, with NATS credentials.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parseBatchInput } from "@tessera/core";
import { connectNats, isTerminal, JobStore, type JobPriority, type JobSampling, type JobStatus } from "@tessera/nats";
import { Code, Coordinator, RpcError, createClient, type Job } from "@tessera/proto";
import { checkBatchLimits, defaultGenerateLimits } from "@tessera/coordinator";
import { applyNatsAuth, applyTransport, type TransportFlags } from "../security.js";
import type { NatsAuthFlags, NatsTlsFlags } from "@tessera/nats";
import { defaultNodeId, startTelemetry } from "@tessera/telemetry";

/** Where every job command goes: a coordinator's gRPC job RPCs (`cluster`), else NATS directly. */
export interface NatsFlags extends NatsAuthFlags, NatsTlsFlags, TransportFlags {
  /** Comma-separated servers. */
  nats: string;
  natsPrefix: string;
  /** A coordinator's host:port: the job RPCs there (as a tenant, with `token`), not NATS. */
  cluster?: string;
  /** Bearer token for a coordinator started with --tokens. */
  token?: string;
}

/** Flags of `tessera submit`. */
export interface SubmitFlags extends NatsFlags {
  jobId?: string;
  priority: JobPriority;
  tenant?: string;
  model?: string;
  tokenizer?: string;
  format: "auto" | "tessera" | "openai";
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
}

/** What the commands print of a job, whichever way it was read. */
interface JobView {
  id: string;
  tenant?: string | undefined;
  priority: string;
  format: string;
  status: string;
  promptsTotal: number;
  promptsDone: number;
  promptsFailed: number;
  completionTokens: number;
  cancelRequested?: boolean | undefined;
  error?: string | undefined;
  attempts: number;
  fileName: string;
  inputBytes: number;
  submittedAt: string;
  startedAt?: string | undefined;
  finishedAt?: string | undefined;
  resultBytes?: number | undefined;
}

/** The job operations, over NATS or over the Coordinator service. */
interface Jobs {
  submit(r: {
    input: Uint8Array;
    fileName: string;
    flags: SubmitFlags;
    sampling: JobSampling;
  }): Promise<{ job: JobView; created: boolean | undefined }>;
  list(tenant: string | undefined): Promise<JobView[]>;
  get(id: string): Promise<JobView | undefined>;
  results(id: string, follow: boolean, signal: AbortSignal): AsyncIterable<string>;
  cancel(id: string): Promise<JobView>;
  /** The job's last state, or undefined when there was none. */
  delete(id: string): Promise<JobView | undefined>;
  watch(id: string, signal: AbortSignal): AsyncIterable<JobView>;
}

/** The job store on NATS, for operators (NATS credentials see every tenant's jobs). */
function natsJobs(store: JobStore): Jobs {
  return {
    async submit({ input, fileName, flags, sampling }) {
      return store.submit({
        input,
        fileName,
        // The coordinator's default limits, checked before anything is stored.
        check: (parsed, bytes) => {
          try {
            checkBatchLimits(parsed, flags.maxTokens, defaultGenerateLimits, bytes);
          } catch (err) {
            throw new Error(`${fileName}: ${(err as Error).message}`, { cause: err });
          }
        },
        format: flags.format,
        priority: flags.priority,
        sampling,
        ...(flags.jobId !== undefined ? { jobId: flags.jobId } : {}),
        ...(flags.tenant !== undefined ? { tenant: flags.tenant } : {}),
        ...(flags.model !== undefined ? { model: resolve(flags.model) } : {}),
        ...(flags.tokenizer !== undefined ? { tokenizer: resolve(flags.tokenizer) } : {}),
      });
    },
    list: (tenant) => store.list(tenant !== undefined ? { tenant } : {}),
    get: (id) => store.get(id),
    results: (id, follow, signal) => store.results(id, { follow, signal }),
    cancel: (id) => store.cancel(id),
    delete: (id) => store.delete(id),
    watch: (id, signal) => store.watch(id, { signal }),
  };
}

/** A Job message as the commands print it (bigints as numbers: JSON has no bigint). */
const viewOf = (j: Job): JobView => ({
  id: j.id,
  tenant: j.tenant || undefined,
  priority: j.priority,
  format: j.format,
  status: j.status,
  promptsTotal: j.promptsTotal,
  promptsDone: j.promptsDone,
  promptsFailed: j.promptsFailed,
  completionTokens: Number(j.completionTokens),
  cancelRequested: j.cancelRequested,
  error: j.error || undefined,
  attempts: j.attempts,
  fileName: j.fileName,
  inputBytes: Number(j.inputBytes),
  submittedAt: j.submittedAt,
  startedAt: j.startedAt || undefined,
  finishedAt: j.finishedAt || undefined,
  resultBytes: Number(j.resultBytes),
});

/** A coordinator's job RPCs, for tenants: the coordinator checks the token and the limits. */
function grpcJobs(client: ReturnType<typeof createClient<typeof Coordinator>>): Jobs {
  return {
    async submit({ input, fileName, flags, sampling }) {
      const job = await client.submitJob({
        input,
        fileName,
        format: flags.format,
        priority: flags.priority,
        jobId: flags.jobId ?? "",
        tenant: flags.tenant ?? "",
        // Paths on the cluster's filesystem, as given.
        modelPath: flags.model ?? "",
        tokenizerPath: flags.tokenizer ?? "",
        sampling: {
          maxTokens: sampling.maxTokens ?? 0,
          temperature: sampling.temperature ?? 0,
          topP: sampling.topP ?? 0,
          seed: BigInt(sampling.seed ?? 0),
        },
      });
      return { job: viewOf(job), created: undefined };
    },
    list: async (tenant) => (await client.listJobs({ tenant: tenant ?? "" })).jobs.map(viewOf),
    async get(id) {
      try {
        return viewOf(await client.getJob({ id }));
      } catch (err) {
        if (err instanceof RpcError && err.code === Code.NOT_FOUND) return undefined;
        throw err;
      }
    },
    async *results(id, follow, signal) {
      for await (const r of client.getResults({ id, follow }, { signal })) yield (r as { line: string }).line;
    },
    cancel: async (id) => viewOf(await client.cancelJob({ id })),
    async delete(id) {
      try {
        return viewOf(await client.deleteJob({ id }));
      } catch (err) {
        if (err instanceof RpcError && err.code === Code.NOT_FOUND) return undefined;
        throw err;
      }
    },
    async *watch(id, signal) {
      for await (const j of client.watchJob({ id }, { signal })) yield viewOf(j as Job);
    },
  };
}

/**
 * Runs `fn` with the job operations `flags` ask for: a coordinator's job
 * RPCs with `cluster` (TLS or --plaintext, and a token), else NATS.
 * @throws Error naming the coordinator and the gRPC status of a refusal.
 */
async function withJobs<T>(flags: NatsFlags, fn: (jobs: Jobs) => Promise<T>): Promise<T> {
  if (flags.cluster !== undefined) {
    applyTransport(flags, `tessera jobs --cluster ${flags.cluster}`, false);
    const client = createClient(
      Coordinator,
      flags.cluster,
      {},
      flags.token === undefined ? {} : { token: flags.token },
    );
    try {
      return await fn(grpcJobs(client));
    } catch (err) {
      if (!(err instanceof RpcError) && (err as { code?: unknown }).code === undefined) throw err;
      const e = RpcError.from(err);
      throw new Error(`coordinator ${flags.cluster}: ${RpcError.codeName(e.code)}: ${e.message}`, { cause: err });
    } finally {
      client.close();
    }
  }
  applyNatsAuth(flags);
  const nc = await connectNats({ servers: flags.nats, name: "tessera-cli" });
  try {
    return await fn(natsJobs(await JobStore.open(nc, { prefix: flags.natsPrefix })));
  } finally {
    await nc.close();
  }
}

/**
 * The exit code of `status`, `results` and `watch` for a job in state `s`:
 * 1 when it failed as a whole, 3 when it was cancelled or ended with failed
 * prompts (as `tessera run` for failed prompts), 0 otherwise (queued,
 * running, or completed with every prompt done).
 */
export function jobExitCode(s: { status: string; promptsFailed: number }): number {
  if (s.status === "failed") return 1;
  if (s.status === "cancelled") return 3;
  return s.status === "completed" && s.promptsFailed > 0 ? 3 : 0;
}

/** "12/16 prompts, 1 failed, 1,024 tokens" */
function progressOf(s: JobView): string {
  const failed = s.promptsFailed > 0 ? `, ${s.promptsFailed} failed` : "";
  return `${s.promptsDone}/${s.promptsTotal} prompts${failed}, ${s.completionTokens} tokens`;
}

/**
 * `tessera submit FILE`: validates the file (every bad line reported, nothing
 * stored), stores the job and prints its id on stdout. Model and tokenizer
 * paths are made absolute (they are read where the cluster runs).
 * @throws InputFileError naming the file, line and field; NatsError.
 */
export async function submitCommand(file: string, flags: SubmitFlags): Promise<number> {
  // With OTEL_* set, the job's trace starts here (tessera.job.submit, then the queue, then its coordinator).
  const telemetry = await startTelemetry({ serviceName: "tessera-cli", role: "cli", nodeId: defaultNodeId() });
  try {
    return await submit(file, flags);
  } finally {
    await telemetry.shutdown();
  }
}

async function submit(file: string, flags: SubmitFlags): Promise<number> {
  const input = await readFile(file).catch((err: Error) => {
    throw new Error(`${file}: cannot read: ${err.message}`);
  });
  // Every bad line (over the line limit, not UTF-8, ...) is refused here, before anything is sent (issue 13).
  parseBatchInput(file, input, flags.format);
  return withJobs(flags, async (jobs) => {
    const sampling = {
      ...(flags.maxTokens !== undefined ? { maxTokens: flags.maxTokens } : {}),
      ...(flags.temperature !== undefined ? { temperature: flags.temperature } : {}),
      ...(flags.topP !== undefined ? { topP: flags.topP } : {}),
      ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
    };
    const { job, created } = await jobs.submit({ input, fileName: file, flags, sampling });
    process.stdout.write(job.id + "\n");
    process.stderr.write(
      created === true
        ? `submitted ${job.id}: ${job.promptsTotal} prompts (${job.format} format, ${job.priority} priority)\n`
        : created === false
          ? `job ${job.id} exists already (${job.status}, ${progressOf(job)}); nothing submitted\n`
          : // The coordinator's SubmitJob does not say whether it was new.
            `job ${job.id}: ${job.status}, ${progressOf(job)} (${job.format} format, ${job.priority} priority)\n`,
    );
    return 0;
  });
}

/** `tessera jobs`: one line per job, oldest first. */
export async function jobsCommand(flags: NatsFlags & { tenant?: string; json: boolean }): Promise<number> {
  return withJobs(flags, async (ops) => {
    for (const j of await ops.list(flags.tenant)) {
      process.stdout.write(
        flags.json
          ? JSON.stringify(j) + "\n"
          : `${j.id}\t${j.status}\t${j.priority}\t${progressOf(j)}\t${j.submittedAt}${j.tenant ? `\t${j.tenant}` : ""}\n`,
      );
    }
    return 0;
  });
}

/**
 * `tessera status ID`: the job's status and progress (JSON with --json).
 * Exit code: see {@link jobExitCode}.
 * @throws Error when there is no such job.
 */
export async function statusCommand(id: string, flags: NatsFlags & { json: boolean }): Promise<number> {
  return withJobs(flags, async (jobs) => {
    const s = await jobs.get(id);
    if (!s) throw new Error(`job "${id}" not found`);
    if (flags.json) {
      process.stdout.write(JSON.stringify(s) + "\n");
      return jobExitCode(s);
    }
    const lines = [
      `job ${s.id}: ${s.status}${s.cancelRequested && s.status === "running" ? " (cancel requested)" : ""}`,
      `progress: ${progressOf(s)}`,
      `priority ${s.priority}, ${s.format} format, input ${s.fileName} (${s.inputBytes} bytes)`,
      `submitted ${s.submittedAt}${s.startedAt ? `, started ${s.startedAt}` : ""}${s.finishedAt ? `, finished ${s.finishedAt}` : ""}, attempts ${s.attempts}`,
      ...(s.error ? [`error: ${s.error}`] : []),
    ];
    process.stdout.write(lines.join("\n") + "\n");
    return jobExitCode(s);
  });
}

/**
 * `tessera results ID [--follow]`: the result lines (JSONL) on stdout;
 * --follow until the job ends. Exit code: the job's state's after the last
 * line (see {@link jobExitCode}).
 */
export async function resultsCommand(
  id: string,
  flags: NatsFlags & { follow: boolean },
  signal: AbortSignal,
): Promise<number> {
  return withJobs(flags, async (jobs) => {
    for await (const line of jobs.results(id, flags.follow, signal)) process.stdout.write(line + "\n");
    const s = await jobs.get(id);
    return s ? jobExitCode(s) : 0;
  });
}

/** `tessera cancel ID`: cancels a queued job at once, a running one through its coordinator. */
export async function cancelCommand(id: string, flags: NatsFlags): Promise<number> {
  return withJobs(flags, async (jobs) => {
    const s = await jobs.cancel(id);
    process.stderr.write(
      s.status === "running" ? `job ${id}: cancel requested; its coordinator stops it\n` : `job ${id}: ${s.status}\n`,
    );
    return 0;
  });
}

/**
 * `tessera jobs delete ID`: deletes the job's input, results and state
 * (cancelling it first when it has not ended).
 * @throws Error when there is no such job (a tenant's: or it is another's).
 */
export async function deleteCommand(id: string, flags: NatsFlags): Promise<number> {
  return withJobs(flags, async (jobs) => {
    const s = await jobs.delete(id);
    if (!s) throw new Error(`job "${id}" not found`);
    const results = s.resultBytes ? `, ${s.resultBytes} bytes of results` : "";
    process.stderr.write(`job ${id} deleted (was ${s.status}; input ${s.inputBytes} bytes${results})\n`);
    return 0;
  });
}

/**
 * `tessera watch ID`: a progress line per change until the job ends.
 * Exit code: the ended job's (see {@link jobExitCode}); 3 when it did not
 * end (interrupted).
 */
export async function watchCommand(id: string, flags: NatsFlags, signal: AbortSignal): Promise<number> {
  return withJobs(flags, async (jobs) => {
    let last: JobView | undefined;
    for await (const s of jobs.watch(id, signal)) {
      last = s;
      process.stdout.write(
        `${new Date().toISOString()} ${s.id} ${s.status}${s.cancelRequested && s.status === "running" ? " (cancelling)" : ""}: ${progressOf(s)}${s.error ? `: ${s.error}` : ""}\n`,
      );
    }
    return last && isTerminal(last.status as JobStatus) ? jobExitCode(last) : 3;
  });
}
