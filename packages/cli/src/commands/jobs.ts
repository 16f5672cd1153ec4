/**
 * Batch job commands (issue 5): `tessera submit | jobs | status | results |
 * cancel | watch`. They talk to NATS JetStream directly (the job queue of
 * @tessera/nats); the Coordinator gRPC service offers the same operations
 * (SubmitJob, ListJobs, GetJob, GetResults, CancelJob, WatchJob) to clients
 * without NATS access.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { connectNats, JobStore, type JobPriority, type JobState } from "@tessera/nats";
import { checkBatchLimits, defaultGenerateLimits } from "@tessera/coordinator";

/** NATS flags every job command takes. */
export interface NatsFlags {
  /** Comma-separated servers. */
  nats: string;
  natsPrefix: string;
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

async function withStore<T>(flags: NatsFlags, fn: (store: JobStore) => Promise<T>): Promise<T> {
  const nc = await connectNats({ servers: flags.nats, name: "tessera-cli" });
  try {
    return await fn(await JobStore.open(nc, { prefix: flags.natsPrefix }));
  } finally {
    await nc.close();
  }
}

/** "12/16 prompts, 1 failed, 1,024 tokens" */
function progressOf(s: JobState): string {
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
  const input = await readFile(file).catch((err: Error) => {
    throw new Error(`${file}: cannot read: ${err.message}`);
  });
  return withStore(flags, async (store) => {
    const sampling = {
      ...(flags.maxTokens !== undefined ? { maxTokens: flags.maxTokens } : {}),
      ...(flags.temperature !== undefined ? { temperature: flags.temperature } : {}),
      ...(flags.topP !== undefined ? { topP: flags.topP } : {}),
      ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
    };
    const { job, created } = await store.submit({
      input,
      fileName: file,
      // The coordinator's default limits, checked before anything is stored.
      check: (parsed, bytes) => {
        try {
          checkBatchLimits(parsed, flags.maxTokens, defaultGenerateLimits, bytes);
        } catch (err) {
          throw new Error(`${file}: ${(err as Error).message}`, { cause: err });
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
    process.stdout.write(job.id + "\n");
    process.stderr.write(
      created
        ? `submitted ${job.id}: ${job.promptsTotal} prompts (${job.format} format, ${job.priority} priority)\n`
        : `job ${job.id} exists already (${job.status}, ${progressOf(job)}); nothing submitted\n`,
    );
    return 0;
  });
}

/** `tessera jobs`: one line per job, oldest first. */
export async function jobsCommand(flags: NatsFlags & { tenant?: string; json: boolean }): Promise<number> {
  return withStore(flags, async (store) => {
    const jobs = await store.list(flags.tenant !== undefined ? { tenant: flags.tenant } : {});
    for (const j of jobs) {
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
 * Exit code 0 when it exists.
 */
export async function statusCommand(id: string, flags: NatsFlags & { json: boolean }): Promise<number> {
  return withStore(flags, async (store) => {
    const s = await store.get(id);
    if (!s) throw new Error(`job "${id}" not found`);
    if (flags.json) {
      process.stdout.write(JSON.stringify(s) + "\n");
      return 0;
    }
    const lines = [
      `job ${s.id}: ${s.status}${s.cancelRequested && s.status === "running" ? " (cancel requested)" : ""}`,
      `progress: ${progressOf(s)}`,
      `priority ${s.priority}, ${s.format} format, input ${s.fileName} (${s.inputBytes} bytes)`,
      `submitted ${s.submittedAt}${s.startedAt ? `, started ${s.startedAt}` : ""}${s.finishedAt ? `, finished ${s.finishedAt}` : ""}, attempts ${s.attempts}`,
      ...(s.error ? [`error: ${s.error}`] : []),
    ];
    process.stdout.write(lines.join("\n") + "\n");
    return 0;
  });
}

/** `tessera results ID [--follow]`: the result lines (JSONL) on stdout; --follow until the job ends. */
export async function resultsCommand(
  id: string,
  flags: NatsFlags & { follow: boolean },
  signal: AbortSignal,
): Promise<number> {
  return withStore(flags, async (store) => {
    for await (const line of store.results(id, { follow: flags.follow, signal })) process.stdout.write(line + "\n");
    return 0;
  });
}

/** `tessera cancel ID`: cancels a queued job at once, a running one through its coordinator. */
export async function cancelCommand(id: string, flags: NatsFlags): Promise<number> {
  return withStore(flags, async (store) => {
    const s = await store.cancel(id);
    process.stderr.write(
      s.status === "running" ? `job ${id}: cancel requested; its coordinator stops it\n` : `job ${id}: ${s.status}\n`,
    );
    return 0;
  });
}

/**
 * `tessera watch ID`: a progress line per change until the job ends.
 * Exit code 0 completed, 3 failed or cancelled.
 */
export async function watchCommand(id: string, flags: NatsFlags, signal: AbortSignal): Promise<number> {
  return withStore(flags, async (store) => {
    let last: JobState | undefined;
    for await (const s of store.watch(id, { signal })) {
      last = s;
      process.stdout.write(
        `${new Date().toISOString()} ${s.id} ${s.status}${s.cancelRequested && s.status === "running" ? " (cancelling)" : ""}: ${progressOf(s)}${s.error ? `: ${s.error}` : ""}\n`,
      );
    }
    return last?.status === "completed" ? 0 : 3;
  });
}
