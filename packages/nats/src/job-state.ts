/**
 * What a job is (issue 5): its priority, its status and the state entry the
 * job-state bucket holds for it ({@link JobState}).
 */
import type { BatchFormat } from "@tessera/core";

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
