/**
 * The worker side of the job queue (issue 5): durable pull consumers, one
 * per priority; pulling the next job, highest priority first; claiming it
 * (a new owner per claim); reading its input; ending it.
 */
import { nanos, type Subscription } from "@nats-io/transport-node";
import { AckPolicy, DeliverPolicy, type Consumer, type JsMsg } from "@nats-io/jetstream";
import type { Context } from "@opentelemetry/api";
import { parseBatchInput, type BatchInput } from "@tessera/core";
import { JobError, JobOwnershipLostError } from "./job-errors.js";
import type { JobHandles } from "./job-handles.js";
import { nonce } from "./job-keys.js";
import { now, updateJob } from "./job-state-bucket.js";
import { JOB_PRIORITIES, isTerminal, type JobPriority, type JobState } from "./job-state.js";
import { deliveryContext } from "./job-trace.js";

const dec = new TextDecoder();

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

/** A worker's pull consumers, by priority ({@link ensureConsumers}). */
export type JobConsumers = Map<JobPriority, Consumer>;

/** Declares the durable pull consumers into `consumers` ({@link JobStore.ensureConsumers}). */
export async function ensureConsumers(h: JobHandles, consumers: JobConsumers, ackWaitMs: number): Promise<void> {
  for (const p of JOB_PRIORITIES) {
    const config = {
      durable_name: h.names.consumer(p),
      filter_subject: h.names.subject(p),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: nanos(ackWaitMs),
      max_deliver: -1,
    };
    try {
      await h.jsm.consumers.add(h.names.stream, config);
    } catch {
      await h.jsm.consumers.update(h.names.stream, config.durable_name, { ack_wait: config.ack_wait });
    }
    consumers.set(p, await h.js.consumers.get(h.names.stream, config.durable_name));
  }
}

/**
 * Pulls the next job of `priorities` ({@link JobStore.nextJob}).
 * @throws JobError when ensureConsumers() was not called.
 */
export async function nextJob(
  h: JobHandles,
  consumers: JobConsumers,
  signal: AbortSignal,
  pollMs = 1000,
  priorities: readonly JobPriority[] = JOB_PRIORITIES,
): Promise<JobDelivery | undefined> {
  if (consumers.size === 0) throw new JobError("nextJob: call ensureConsumers() first");
  let wake: (() => void) | undefined;
  const sub: Subscription = h.nc.subscribe(h.names.subjects, {
    callback: () => wake?.(),
  });
  try {
    while (!signal.aborted) {
      for (const p of JOB_PRIORITIES) {
        if (signal.aborted) return undefined;
        if (!priorities.includes(p)) continue;
        const info = await h.jsm.consumers.info(h.names.stream, h.names.consumer(p));
        if (info.num_pending + info.num_ack_pending === 0) continue;
        const m = await consumers.get(p)!.next({ expires: 1000 });
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
 * Claims a pulled job for `worker` ({@link JobStore.claim}).
 * @throws JobNotFoundError (ack the message: there is nothing to run).
 */
export async function claimJob(h: JobHandles, jobId: string, worker: string): Promise<JobClaim> {
  const owner = `${worker}-${nonce()}`;
  let reason = "";
  const s = await updateJob(h, jobId, (cur) => {
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
 * Reads and parses a job's input ({@link JobStore.readInput}).
 * @throws JobError when the object is missing.
 */
export async function readInput(h: JobHandles, s: JobState): Promise<BatchInput> {
  const data = await h.obj.getBlob(s.inputObject);
  if (!data) throw new JobError(`job "${s.id}": input ${s.inputObject} is missing from ${h.names.dataBucket}`);
  // Checked when it was submitted: no line limit again (it may have been submitted under a larger one).
  return parseBatchInput(s.fileName, data, s.format, { maxLineBytes: Number.MAX_SAFE_INTEGER });
}

/**
 * Ends a claimed job ({@link JobStore.finish}).
 * @throws JobOwnershipLostError when another claim holds the job.
 */
export async function finishJob(
  h: JobHandles,
  jobId: string,
  owner: string,
  status: "completed" | "failed" | "cancelled",
  error?: string,
): Promise<JobState> {
  return (await updateJob(h, jobId, (s) => {
    if (s.owner !== owner) throw new JobOwnershipLostError(jobId, owner, s.owner);
    return { ...s, status, finishedAt: now(), ...(error !== undefined ? { error } : {}) };
  }))!;
}

/** The {@link JobDelivery} of a pulled job message of `priority`. */
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
