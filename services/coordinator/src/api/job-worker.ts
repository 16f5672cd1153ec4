/**
 * The coordinator's job worker (issue 5): pulls batch jobs from the NATS
 * work queue (high priority first), runs each through its coordinator's
 * Generate, called in-process (`JobRunner.generate`: the checks, limits and
 * engine of a Generate call, as an admin, with no loopback RPC), stores
 * results in chunks as prompts finish and checkpoints them in the job state,
 * and acks the job only once every result is stored. A redelivered job (its
 * coordinator died) skips the prompts whose results are stored, so no prompt
 * is answered twice. One job at a time. It also sweeps ended jobs past
 * their retention (job-retention.ts), and backs off while the job store is
 * full (JetStream "insufficient resources"): pulls pause, one line is
 * logged per pause, and only a job whose results cannot be stored fails.
 */
import { basename } from "node:path";
import { SpanKind, trace } from "@opentelemetry/api";
import { hostname } from "node:os";
import { watchJobQueue } from "../metrics.js";
import { COORDINATOR_DEFAULTS } from "../options.js";
import {
  endSpanWhen,
  Code,
  GenerateEventSchema,
  GenerateRequestSchema,
  RpcError,
  create,
  type GenerateRequest,
  type MessageInitShape,
  type Result,
} from "@tessera/proto";
import { ConfigError, formatBatchResult, formatDuration, generateRequest } from "@tessera/core";
import { startJobSweeper, type JobSweeper } from "./job-retention.js";
import {
  JOB_PRIORITIES,
  JobOwnershipLostError,
  JobStore,
  connectNats,
  isNatsOutage,
  isStoreFull,
  redactNatsServers,
  type JobDelivery,
  type JobPriority,
  type JobState,
  type StoredResult,
} from "@tessera/nats";

/** The job worker's defaults, written once (see {@link JobWorkerOptions}; times in ms). */
export const JOB_WORKER_DEFAULTS = Object.freeze({
  defaultModel: "default",
  ackWaitMs: 10_000,
  chunkResults: 16,
  flushMs: 500,
  concurrency: COORDINATOR_DEFAULTS.jobConcurrency,
  maxAttempts: 3,
  retentionMs: COORDINATOR_DEFAULTS.jobRetentionMs,
  sweepMs: COORDINATOR_DEFAULTS.jobSweepMs,
  /** While the job store is full, pulls pause for this long, doubling up to fullStoreMaxPauseMs. */
  fullStorePauseMs: 1000,
  fullStoreMaxPauseMs: 30_000,
});

/**
 * What runs a job's Generate request: the coordinator, in-process (see
 * CoordinatorService.generate).
 */
export interface JobRunner {
  /**
   * Runs `request` as an admin until it ends; every event goes to `emit`.
   * `tenant` (the job's submitter) is the tenant whose turn its prompts'
   * tokenising takes (tokenize/tokenizer-pool.ts).
   * @throws RpcError as the Generate RPC would (CANCELLED when `signal` aborts).
   */
  generate(
    request: GenerateRequest,
    run: {
      signal: AbortSignal;
      emit(event: MessageInitShape<typeof GenerateEventSchema>): void;
      tenant?: string | undefined;
    },
  ): Promise<void>;
}

/** Options of {@link createJobWorker}. */
export interface JobWorkerOptions {
  /** NATS servers, e.g. "127.0.0.1:4222". */
  nats: string;
  /** @default "tessera" */
  natsPrefix?: string;
  /** The coordinator whose engine runs the jobs (in-process). */
  coordinator: JobRunner;
  /** Model name reported for jobs that name none (OpenAI output's `model`). @default "default" */
  defaultModel?: string;
  /**
   * How long a job may go without a sign of life before JetStream hands it
   * to another coordinator, in ms; the worker signals every quarter of it.
   * @default 10000
   */
  ackWaitMs?: number;
  /** Results per stored chunk. @default 16 */
  chunkResults?: number;
  /** Longest a finished result waits before its chunk is stored, in ms. @default 500 */
  flushMs?: number;
  /**
   * Jobs run at once; one more may start whose priority is above every
   * running job's (its sequences then join the running batch first).
   * @default 1
   */
  concurrency?: number;
  /** Claims a job gets before it fails for a retriable error (UNAVAILABLE, ...). @default 3 */
  maxAttempts?: number;
  /** Ended jobs are deleted this long after they ended (job-retention.ts), in ms. @default 30 days */
  retentionMs?: number;
  /** How often the retention sweep runs, in ms. @default 600000 */
  sweepMs?: number;
  /** A sweep deletes an object of no job once it is this old, in ms. @default JOB_ORPHAN_GRACE_MS (1 h) */
  orphanGraceMs?: number;
  /** The first pause of pulls while the job store is full, in ms (doubling up to 30 s). @default 1000 */
  fullStorePauseMs?: number;
  /** @default stderr */
  log?: (line: string) => void;
}

/** A running job worker. */
export interface JobWorker {
  /** Connects, declares the queue and starts pulling. @throws NatsError when NATS does not answer. */
  start(): Promise<void>;
  /**
   * Stops pulling; a running job's Generate is cancelled, the results
   * it has are stored and the job is handed back (nak) for another
   * coordinator to resume. Idempotent.
   */
  close(): Promise<void>;
}

/**
 * A job stopped by NATS being out of reach is handed back without failing,
 * up to this many times its maxAttempts claims (a job that itself makes
 * NATS time out, e.g. with a huge chunk, still fails in the end).
 */
const OUTAGE_ATTEMPTS = 3;

const tracer = trace.getTracer("@tessera/coordinator");

/** Errors a retry cannot fix: the job fails at once. */
const PERMANENT = new Set<number>([
  Code.INVALID_ARGUMENT,
  Code.NOT_FOUND,
  Code.FAILED_PRECONDITION,
  Code.OUT_OF_RANGE,
  Code.UNIMPLEMENTED,
  Code.PERMISSION_DENIED,
]);

/** Creates a job worker; nothing happens until `start()`. */
export function createJobWorker(o: JobWorkerOptions): JobWorker {
  const log = o.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const ackWaitMs = o.ackWaitMs ?? JOB_WORKER_DEFAULTS.ackWaitMs;
  const chunkResults = o.chunkResults ?? JOB_WORKER_DEFAULTS.chunkResults;
  const flushMs = o.flushMs ?? JOB_WORKER_DEFAULTS.flushMs;
  const maxAttempts = o.maxAttempts ?? JOB_WORKER_DEFAULTS.maxAttempts;
  const concurrency = o.concurrency ?? JOB_WORKER_DEFAULTS.concurrency;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new ConfigError("concurrency", `must be an integer >= 1, got ${o.concurrency}`);
  }
  const workerName = `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const stop = new AbortController();
  const fullStore = new FullStoreBackoff(log, o.fullStorePauseMs ?? JOB_WORKER_DEFAULTS.fullStorePauseMs);
  let sweeper: JobSweeper | undefined;
  let nc: Awaited<ReturnType<typeof connectNats>> | undefined;
  let loop: Promise<void> | undefined;
  let closed: Promise<void> | undefined;
  // For the job gauges (metrics.ts): the running jobs' priorities, and the unregistering.
  let runningJobs: ReadonlyMap<Promise<void>, JobPriority> = new Map();
  let unwatchQueue: (() => void) | undefined;
  const settings: WorkerContext = {
    o,
    log,
    ackWaitMs,
    chunkResults,
    flushMs,
    maxAttempts,
    workerName,
    stop: stop.signal,
    fullStore,
  };

  /**
   * Pulls and runs jobs: up to `concurrency` at once, and beyond that one
   * more of a priority above every running job's, so that its sequences
   * join the coordinator's running batch ahead of the running jobs' queued
   * ones (see batch-slots.ts).
   */
  async function run(store: JobStore): Promise<void> {
    const running = new Map<Promise<void>, JobPriority>();
    runningJobs = running;
    // Aborted when a running job ends: a pull waiting for a job of a
    // higher priority only is then redone with every priority allowed.
    let pulling: AbortController | undefined;
    while (!stop.signal.aborted) {
      const top = Math.min(...[...running.values()].map((p) => JOB_PRIORITIES.indexOf(p)));
      // Below the concurrency any job; at it, one more of a higher priority; then none.
      const allowed =
        running.size < concurrency
          ? JOB_PRIORITIES
          : running.size === concurrency
            ? JOB_PRIORITIES.filter((p) => JOB_PRIORITIES.indexOf(p) < top)
            : [];
      if (allowed.length === 0) {
        await Promise.race(running.keys());
        continue;
      }
      // The job store is full: no job could be claimed or stored; wait out the pause.
      await fullStore.wait(stop.signal);
      if (stop.signal.aborted) break;
      pulling = new AbortController();
      let d: JobDelivery | undefined;
      try {
        d = await store.nextJob(AbortSignal.any([stop.signal, pulling.signal]), 1000, allowed);
      } catch (err) {
        if (stop.signal.aborted) break;
        log(`jobs: pulling failed: ${(err as Error).message}; retrying`);
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (!d) continue;
      if (stop.signal.aborted) {
        // Pulled while stopping: hand it straight back.
        d.nak();
        break;
      }
      const delivery = d;
      const job: Promise<void> = tracedRunJob(store, delivery)
        .catch((err: unknown) => {
          // No room to claim or end it: handed back after the pause (one line per pause, not per job).
          if (isStoreFull(err)) return delivery.nak(fullStore.refused(err));
          // The job stays unacked: JetStream redelivers it after the ack wait.
          log(`jobs: job ${delivery.jobId}: ${(err as Error).message}`);
        })
        .finally(() => {
          running.delete(job);
          pulling?.abort();
        });
      running.set(job, delivery.priority);
    }
    await Promise.allSettled(running.keys());
  }

  /**
   * runJob in a "tessera.job.run" span under the job message's trace
   * context (submit -> queue -> run), so the Generate it runs, and
   * everything under it, joins the submitter's trace.
   */
  function tracedRunJob(store: JobStore, d: JobDelivery): Promise<void> {
    const attributes = {
      "tessera.job_id": d.jobId,
      "tessera.job.priority": d.priority,
      "tessera.job.delivery_count": d.deliveryCount,
      "tessera.worker": workerName,
    };
    return tracer.startActiveSpan("tessera.job.run", { kind: SpanKind.CONSUMER, attributes }, d.traceContext, (span) =>
      endSpanWhen(span, runJob(settings, store, d)),
    );
  }

  return {
    async start() {
      nc = await connectNats({ servers: o.nats, name: `tessera-coordinator-jobs-${workerName}` });
      const store = await JobStore.open(nc, { prefix: o.natsPrefix });
      await store.ensureConsumers(ackWaitMs);
      loop = run(store);
      sweeper = startJobSweeper(store, {
        retentionMs: o.retentionMs ?? JOB_WORKER_DEFAULTS.retentionMs,
        sweepMs: o.sweepMs ?? JOB_WORKER_DEFAULTS.sweepMs,
        ...(o.orphanGraceMs !== undefined ? { orphanGraceMs: o.orphanGraceMs } : {}),
        log,
      });
      const conn = nc;
      unwatchQueue = watchJobQueue(
        JOB_PRIORITIES,
        // JetStream's consumer info API, asked at each scrape: jobs not yet delivered.
        async (p) => {
          const reply = await conn.request(
            `$JS.API.CONSUMER.INFO.${store.names.stream}.${store.names.consumer(p as JobPriority)}`,
            undefined,
            { timeout: 1000 },
          );
          const n = (reply.json() as { num_pending?: unknown }).num_pending;
          return typeof n === "number" ? n : undefined;
        },
        () => runningJobs.values(),
      );
      log(`jobs: pulling from ${store.names.stream} on ${redactNatsServers(o.nats)}`);
    },
    close() {
      closed ??= (async () => {
        stop.abort();
        unwatchQueue?.();
        await sweeper?.stop();
        await loop;
        await nc?.close();
      })();
      return closed;
    },
  };
}

/** What running one job needs from its worker. */
interface WorkerContext {
  o: JobWorkerOptions;
  log: (line: string) => void;
  ackWaitMs: number;
  chunkResults: number;
  flushMs: number;
  maxAttempts: number;
  workerName: string;
  /** Aborts when the worker stops (a running job is handed back). */
  stop: AbortSignal;
  fullStore: FullStoreBackoff;
}

/**
 * The worker's pause while the job store is full: each refused write asks
 * for a pause (1 s, doubling up to 30 s while writes keep being refused,
 * back to 1 s after a write lands); one line is logged per pause, naming
 * the refusals since the last one. Pulls wait the pause out, and a job
 * handed back is redelivered after it.
 */
class FullStoreBackoff {
  private pauseMs = 0;
  private until = 0;
  private refusals = 0;

  constructor(
    private readonly log: (line: string) => void,
    private readonly firstMs: number,
    private readonly maxMs = JOB_WORKER_DEFAULTS.fullStoreMaxPauseMs,
  ) {}

  /** A write was refused for want of room: @returns how long to wait before the job is tried again, in ms. */
  refused(err: unknown): number {
    this.refusals++;
    const now = Date.now();
    if (now >= this.until) {
      this.pauseMs = Math.min(this.maxMs, this.pauseMs === 0 ? this.firstMs : this.pauseMs * 2);
      this.until = now + this.pauseMs;
      this.log(
        `jobs: the job store is full (${(err as Error).message}); ${this.refusals} writes refused; ` +
          `pausing pulls for ${formatDuration(this.pauseMs)}`,
      );
      this.refusals = 0;
    }
    return this.until - now;
  }

  /** A write landed: the next pause starts short again. */
  stored(): void {
    this.pauseMs = 0;
  }

  /** Resolves once the current pause is over (or `signal` aborts). */
  async wait(signal: AbortSignal): Promise<void> {
    const ms = this.until - Date.now();
    if (ms <= 0 || signal.aborted) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}

/**
 * Runs one delivered job: claims it, runs its prompts not yet stored
 * through the coordinator's Generate (in-process), stores the results in
 * chunks, and acks it, fails it, or hands it back (see the file comment).
 * @throws the claim's or the store's errors (the job then stays unacked).
 */
async function runJob(w: WorkerContext, store: JobStore, d: JobDelivery): Promise<void> {
  const { o, log, ackWaitMs, chunkResults, flushMs, maxAttempts, workerName } = w;
  const stopSignal = w.stop;
  let claim;
  try {
    claim = await store.claim(d.jobId, workerName);
  } catch (err) {
    if ((err as Error).name === "JobNotFoundError") {
      log(`jobs: job ${d.jobId} has no state; dropping its message`);
      return d.ack();
    }
    throw err;
  }
  if (claim.kind === "skip") {
    log(`jobs: job ${d.jobId} skipped: ${claim.reason}`);
    return d.ack();
  }
  w.fullStore.stored();
  const { owner } = claim;
  const job = claim.state;
  log(
    `jobs: job ${job.id} (${job.priority}) attempt ${job.attempts}: ${job.promptsDone}/${job.promptsTotal} prompts already stored`,
  );
  const abort = new AbortController();
  let why: "cancelled" | "lost" | "stopping" | undefined;
  const halt = (reason: "cancelled" | "lost" | "stopping") => {
    why ??= reason;
    abort.abort(new Error(reason));
  };
  const onStop = () => halt("stopping");
  stopSignal.addEventListener("abort", onStop, { once: true });
  if (stopSignal.aborted) onStop();
  const heartbeat = setInterval(() => d.working(), Math.max(250, ackWaitMs / 4));
  // Cancel and loss of the claim arrive as changes of the job's state.
  const watching = (async () => {
    for await (const s of store.watch(job.id, { signal: abort.signal })) {
      if (s.cancelRequested) halt("cancelled");
      else if (s.owner !== owner) halt("lost");
    }
  })().catch(() => undefined);
  const chunks = new ChunkWriter(
    store,
    job,
    owner,
    chunkResults,
    flushMs,
    o.defaultModel ?? JOB_WORKER_DEFAULTS.defaultModel,
  );
  try {
    const input = await store.readInput(job);
    const done = new Set(job.doneIds);
    const remaining = input.prompts.filter((p) => !done.has(p.id));
    if (remaining.length > 0 && !abort.signal.aborted) {
      const request = create(
        GenerateRequestSchema,
        generateRequest(remaining, job.sampling, {
          jobId: job.id,
          priority: job.priority,
          modelPath: job.model ?? "",
          tokenizerPath: job.tokenizer ?? "",
        }),
      );
      // Results are taken as a Generate client over gRPC received them:
      // whole messages, defaults filled, and nothing once the job is aborted
      // (the sequences the engine finishes while it stops are no results: a
      // resumed run must still do them). A store that fails stops the job
      // through the abort instead of throwing inside the engine, and its
      // error is the job's.
      let storeError: unknown;
      try {
        await o.coordinator.generate(request, {
          signal: abort.signal,
          tenant: job.tenant,
          emit(init) {
            if (abort.signal.aborted || init.event?.case !== "result") return;
            const ev = create(GenerateEventSchema, init);
            if (ev.event.case !== "result") return;
            try {
              chunks.add(ev.event.value);
            } catch (err) {
              storeError = err;
              abort.abort(err);
            }
          },
        });
      } catch (err) {
        throw storeError ?? err;
      }
      if (storeError !== undefined) throw storeError;
    }
    await chunks.close();
    if (why) throw new Error(why);
    const end = await store.finish(job.id, owner, "completed");
    await d.ack();
    log(`jobs: job ${job.id} completed: ${end.promptsDone} prompts, ${end.completionTokens} tokens`);
  } catch (err) {
    // Keep what finished: a resumed run then skips those prompts.
    await chunks.close().catch((e: unknown) => {
      if (e instanceof JobOwnershipLostError) why ??= "lost";
    });
    if (err instanceof JobOwnershipLostError) why ??= "lost";
    if (why === "lost") {
      log(`jobs: job ${job.id}: another coordinator took it over; stopped here`);
    } else if (why === "cancelled") {
      await store.finish(job.id, owner, "cancelled");
      await d.ack();
      log(`jobs: job ${job.id} cancelled`);
    } else if (why === "stopping") {
      d.nak();
      log(`jobs: job ${job.id} handed back (coordinator stopping)`);
    } else {
      const e = RpcError.from(err);
      const message = `${RpcError.codeName(e.code)}: ${e.message}`;
      if (isNatsOutage(err) && job.attempts < OUTAGE_ATTEMPTS * maxAttempts) {
        // NATS was out of reach (a restart): not the job's fault, so it
        // never fails for it; JetStream redelivers it once NATS is back.
        d.nak(1000);
        log(`jobs: job ${job.id} attempt ${job.attempts} stopped: NATS out of reach (${e.message}); handed back`);
      } else if (isStoreFull(err) && job.attempts < maxAttempts) {
        // No room for its results: handed back after the pause; it fails after maxAttempts claims.
        d.nak(w.fullStore.refused(err));
      } else if (PERMANENT.has(e.code) || job.attempts >= maxAttempts) {
        await store.finish(job.id, owner, "failed", message);
        await d.ack();
        log(`jobs: job ${job.id} failed: ${message}`);
      } else {
        d.nak(1000);
        log(`jobs: job ${job.id} attempt ${job.attempts} failed (${message}); retrying`);
      }
    }
  } finally {
    clearInterval(heartbeat);
    stopSignal.removeEventListener("abort", onStop);
    abort.abort();
    await watching;
  }
}

/**
 * Buffers finished results of a job and stores them in chunks (when
 * `chunkResults` are waiting or `flushMs` after the first), one store at a
 * time, in order.
 */
class ChunkWriter {
  private buffer: StoredResult[] = [];
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private failure: unknown;

  constructor(
    private readonly store: JobStore,
    private readonly job: JobState,
    private readonly owner: string,
    private readonly chunkResults: number,
    private readonly flushMs: number,
    private readonly defaultModel: string,
  ) {}

  add(r: Result): void {
    if (this.failure) throw this.failure;
    this.buffer.push({
      promptId: r.id,
      line: formatBatchResult(this.job.format, r, {
        jobId: this.job.id,
        model: this.job.model ? basename(this.job.model) : this.defaultModel,
        created: Math.floor(Date.now() / 1000),
      }),
      promptTokens: r.promptTokenIds.length,
      completionTokens: r.completionTokenIds.length,
      failed: r.finishReason === "error",
    });
    if (this.buffer.length >= this.chunkResults) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), this.flushMs);
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.buffer.length === 0) return;
    const batch = this.buffer;
    this.buffer = [];
    this.chain = this.chain.then(async () => {
      if (this.failure) return;
      try {
        await this.store.storeResults(this.job.id, this.owner, batch);
      } catch (err) {
        this.failure = err;
      }
    });
  }

  /** Stores what is buffered and waits for every store. @throws the first store's error. */
  async close(): Promise<void> {
    this.flush();
    await this.chain;
    if (this.failure) throw this.failure;
  }
}
