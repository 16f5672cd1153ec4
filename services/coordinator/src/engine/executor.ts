/**
 * The execute phase (vLLM v1's `execute_model()`): builds the
 * `ForwardRequest` of a step plan, sends it through the gpu-node pipeline
 * and returns a typed {@link StepOutcome}: each part's logit rows, or which
 * node failed and what to do about it. A gpu-node failure is classified by
 * `NodeError.reason`: MODEL_NOT_LOADED (a restarted gpu-node) or
 * MODEL_MISMATCH (another coordinator loaded its model) loads the stage
 * again and re-sends; a transient one (UNAVAILABLE, DEADLINE_EXCEEDED,
 * CANCELLED, NOT_FOUND) re-sends after a backoff (100 ms doubling to 2 s)
 * while the pipeline has been failing for less than `retryTimeoutMs` of the
 * coordinator's running time (BatchContext.runningNow: a paused coordinator's
 * window does not run out).
 *
 * Every step has a deadline (step-deadline.ts): past it, the stages that
 * do not answer a health check are marked lost, the step is abandoned (its
 * late answer is dropped) and re-sent once they are back (their health
 * check answers SERVING, or the registry sees them heartbeat), for up to
 * `retryTimeoutMs`; then every part fails with "DEADLINE_EXCEEDED:
 * gpu-node <address> did not answer step <n> ...". While every stage
 * answers health checks the step is waited for, a deadline at a time, up
 * to `retryTimeoutMs`.
 */
import { trace } from "@opentelemetry/api";
import {
  Code,
  NodeErrorReason,
  RpcError,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
  type NodeError,
  type StepTimings,
} from "@tessera/proto";
import { tensorF32 } from "@tessera/core";
import { recordStep } from "../metrics.js";
import type { AttentionNodeRef } from "../placement.js";
import { runningMsOf, sleep, type BatchJob } from "./context.js";
import { StepDeadlines } from "./step-deadline.js";
import { splitLogitRows, type StepPart } from "./step-plan.js";

/** Codes after which a node's sequences wait for it (a gpu-node: the step is re-sent) instead of failing. */
export const TRANSIENT = new Set<number>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.NOT_FOUND]);

/** What one send of a step gave. */
export type StepOutcome =
  /** The step ran: `rows[i]` are parts[i]'s logit rows, each [vocab_size]. */
  | { kind: "ok"; rows: Float32Array[][]; timings: StepTimings | undefined; seconds: number }
  /** Send the step again (re-planned: a gpu-node came back or was reloaded, or the failing node holds none of it now). */
  | { kind: "resend" }
  /** An attention node failed: `parts` are those with a shard on `node` (the one named by `error.seq_id`, when set). */
  | { kind: "attention-failed"; node: AttentionNodeRef; error: NodeError; parts: StepPart[] }
  /** The step cannot run: every part fails with `message`. */
  | { kind: "failed"; message: string };

/** Sends one job's steps (see the file comment). */
export class StepExecutor {
  /** The id of the last step sent (one per send). */
  stepId = 0n;
  private gpuFailingSince: number | undefined;
  private gpuDelay = 100;
  private readonly deadlines: StepDeadlines;
  /** Stages this executor marked lost for a missed deadline, with the reason; steps wait while one is down. */
  private readonly hung = new Map<string, string>();

  constructor(private readonly job: BatchJob) {
    this.deadlines = new StepDeadlines(job.ctx);
  }

  /** The ForwardRequest of `parts`: every part's tokens and its KV shards, n_logit_rows when above 1. */
  buildRequest(parts: readonly StepPart[]): MessageInitShape<typeof ForwardRequestSchema> & { stepId: bigint } {
    const groups = this.job.groups;
    return {
      stepId: this.stepId,
      sequences: parts.map((p) => {
        const s = p.seq;
        const common = {
          seqId: s.seqId,
          startPos: p.startPos,
          nTokens: p.tokens.length,
          ...(p.nLogitRows > 1 ? { nLogitRows: p.nLogitRows } : {}),
        };
        return s.shards.length === 1 && groups === 1
          ? { ...common, attentionAddress: s.shards[0]!.node.address }
          : {
              ...common,
              shards: s.shards.map((sh) => ({
                address: sh.node.address,
                seqId: sh.seqId,
                kvHeadStart: sh.kvHeadStart,
                kvHeadEnd: sh.kvHeadEnd,
              })),
            };
      }),
      tokens: parts.flatMap((p) => p.tokens),
    };
  }

  /**
   * Sends `parts` as one step (a new step id).
   * @throws RpcError CANCELLED when the job's signal has aborted.
   */
  async execute(parts: readonly StepPart[], isDecode: boolean): Promise<StepOutcome> {
    const { ctx } = this.job;
    if (ctx.signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
    const hung = this.stillHung();
    if (hung) return (await this.gpuRetry(hung)) ? { kind: "resend" } : { kind: "failed", message: hung };
    this.stepId++;
    const req = this.buildRequest(parts);
    const ts = performance.now();
    let res: ForwardResponse;
    try {
      const sent = await this.deadlines.send(req, isDecode);
      if ("missed" in sent) {
        for (const address of sent.marked) this.hung.set(address, sent.missed);
        // Every stage answers health checks, and the step has waited retryTimeoutMs: stuck.
        if (sent.marked.length === 0) return { kind: "failed", message: sent.missed };
        return (await this.gpuRetry(sent.missed)) ? { kind: "resend" } : { kind: "failed", message: sent.missed };
      }
      res = sent;
    } catch (err) {
      if (ctx.signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
      const message = RpcError.from(err).message;
      if (await this.gpuRetry(message)) return { kind: "resend" };
      return { kind: "failed", message };
    }
    if (!res.error) return this.answered(res, parts, isDecode, ts);
    return this.failed(res.error, parts);
  }

  /** The failure of a stage this executor marked lost for a deadline and that is still down, else undefined. */
  private stillHung(): string | undefined {
    for (const [address, message] of this.hung) {
      if (this.job.ctx.membership.isDown(address)) return message;
      this.hung.delete(address);
      this.job.ctx.options.log(`gpu-node ${address} answers again; re-sending step ${this.stepId + 1n}`);
    }
    return undefined;
  }

  private answered(res: ForwardResponse, parts: readonly StepPart[], isDecode: boolean, ts: number): StepOutcome {
    const { ctx } = this.job;
    const seconds = (performance.now() - ts) / 1000;
    recordStep(isDecode, seconds);
    this.deadlines.record(isDecode, seconds);
    this.gpuFailingSince = undefined;
    this.gpuDelay = 100;
    const rows = splitLogitRows(tensorF32(res.logits, "logits"), parts, ctx.model.header.shape.vocabSize);
    if (!rows) return { kind: "failed", message: `gpu-node ${ctx.gpu.address}: logits of the wrong shape` };
    if (res.timings) {
      trace.getActiveSpan()?.setAttributes({
        "tessera.gpu.dense_seconds": res.timings.denseSeconds,
        "tessera.gpu.attention_wait_seconds": res.timings.attentionWaitSeconds,
        "tessera.gpu.attention_compute_seconds": res.timings.attentionComputeSeconds,
        "tessera.gpu.total_seconds": res.timings.totalSeconds,
      });
    }
    return { kind: "ok", rows, timings: res.timings, seconds };
  }

  private async failed(failure: NodeError, parts: readonly StepPart[]): Promise<StepOutcome> {
    const { ctx } = this.job;
    // A failure naming one sequence (NodeError.seq_id: its own KV cache
    // failed) affects that sequence alone; the rest are re-sent.
    const hit = (sh: { node: AttentionNodeRef; seqId: string }) =>
      sh.node.address === failure.address && (!failure.seqId || sh.seqId === failure.seqId);
    const onNode = failure.address ? parts.filter((p) => p.seq.shards.some(hit)) : [];
    if (failure.role !== "gpu" && failure.address && onNode.length === 0) {
      // An attention node no sequence of the step is on any more (they
      // moved while the step was in flight): send the step again.
      ctx.options.log(`step ${this.stepId}: ${failure.message}; no sequence is there now, re-sending`);
      return { kind: "resend" };
    }
    if (onNode.length > 0) {
      // One attention node failed: only the sequences with a shard on it are affected.
      const node = onNode[0]!.seq.shards.find(hit)!.node;
      return { kind: "attention-failed", node, error: failure, parts: onNode };
    }
    // The pipeline has put the failing gpu-node's address in front.
    const message = failure.message;
    if (needsReload(failure) && (await this.gpuRetry(message))) {
      await ctx.reloadStage(failure.address).catch((err: unknown) => ctx.options.log((err as Error).message));
      return { kind: "resend" };
    }
    if (TRANSIENT.has(failure.code) && (await this.gpuRetry(message))) return { kind: "resend" };
    return { kind: "failed", message };
  }

  /**
   * Waits before re-sending a step the gpu-node could not run; false when
   * it has been failing for longer than retryTimeoutMs of running time.
   */
  private async gpuRetry(message: string): Promise<boolean> {
    const { options, signal } = this.job.ctx;
    // In the coordinator's running time: a pause of the coordinator does not use up the window.
    const now = runningMsOf(this.job.ctx);
    this.gpuFailingSince ??= now;
    if (now + this.gpuDelay - this.gpuFailingSince > options.retryTimeoutMs) return false;
    options.log(`step ${this.stepId}: ${message}; retrying in ${this.gpuDelay} ms`);
    await sleep(this.gpuDelay, signal);
    this.gpuDelay = Math.min(this.gpuDelay * 2, 2000);
    return true;
  }
}

/**
 * Whether a step failed because its gpu-node does not hold the stage's
 * model: none (MODEL_NOT_LOADED: it restarted) or another one
 * (MODEL_MISMATCH: another coordinator loaded it after this one's lease
 * lapsed), as NodeError.reason says; the failure's code, role and message
 * are not consulted. The stage is then loaded again, which waits while the
 * other coordinator's lease is live.
 */
export function needsReload(failure: Pick<NodeError, "reason" | "role" | "code">): boolean {
  return failure.reason === NodeErrorReason.MODEL_NOT_LOADED || failure.reason === NodeErrorReason.MODEL_MISMATCH;
}
