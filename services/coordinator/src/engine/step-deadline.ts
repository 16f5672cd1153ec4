/**
 * Step deadlines: every Forward step the coordinator sends gets one, from
 * the step times measured so far in the job — max(`stepDeadlineMs`,
 * `stepDeadlineFactor` × the p99 of its answered steps of the same kind,
 * prefill or decode, once there are 20 of them) — counted in time the coordinator itself was running
 * (@tessera/core's runningTimeout: a pause of its own process does not
 * expire it). A step past its deadline finds which stages are unresponsive
 * (no SERVING answer to a health check within a second): those are marked
 * lost in the membership, so no new job plans with them, until the health
 * probe (or the registry) sees them answer again.
 */
import { createHistogram, type RecordableHistogram } from "node:perf_hooks";
import { ROLES } from "@tessera/core";
import { runningTimeout } from "@tessera/core";
import { checkHealth, type ForwardRequest, type ForwardResponse } from "@tessera/proto";
import type { BatchContext } from "./context.js";

/** A step as the pipeline sends it. */
type StepRequest = Parameters<BatchContext["gpu"]["step"]>[0] & Pick<ForwardRequest, "stepId">;

/** A step abandoned past its deadline: why (the parts' error) and the stages marked lost for it (maybe none). */
export interface MissedDeadline {
  missed: string;
  marked: string[];
}

/** Answered steps of a kind before their p99 counts (one slow first step after a Load must not set it). */
const MIN_SAMPLES = 20;
/** How long a stage may take to answer the health check of a step past its deadline, in ms. */
const HEALTH_CHECK_MS = 1000;

/** The deadlines of one job's steps (see the file comment). */
export class StepDeadlines {
  /** Answered steps' round trips, in µs (a histogram of Node's perf_hooks: p99 without keeping samples). */
  private readonly times = { prefill: createHistogram(), decode: createHistogram() };

  constructor(private readonly ctx: Pick<BatchContext, "options" | "membership" | "stages" | "gpu" | "signal">) {}

  /**
   * Sends `req` through the pipeline and waits for its answer, a deadline
   * at a time (see the file comment). Resolves with the answer, or with
   * the {@link MissedDeadline} of a step abandoned: stages marked lost, or
   * none when every stage answers health checks and the step has waited
   * `retryTimeoutMs`.
   * @throws what the pipeline's step throws (NodeUnreachableError, RpcError
   *   CANCELLED when the job's signal aborts).
   */
  async send(req: StepRequest, isDecode: boolean): Promise<ForwardResponse | MissedDeadline> {
    const { ctx } = this;
    const deadlineMs = this.deadlineMs(isDecode);
    const step = new AbortController();
    const onAbort = () => step.abort();
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    const answer = ctx.gpu.step(req, step.signal);
    let attentionHung = false;
    try {
      for (let waitedMs = deadlineMs; ; waitedMs += deadlineMs) {
        let cancel = () => {};
        const expired = new Promise<"expired">(
          (resolve) => (cancel = runningTimeout(deadlineMs, () => resolve("expired"))),
        );
        const first = await Promise.race([answer, expired]).finally(() => cancel());
        if (first !== "expired") return first;
        const stages = ctx.stages.map((st) => st.address);
        const marked = await this.markUnresponsive(stages, "gpu-node", req.stepId, waitedMs);
        if (marked.length === 0) {
          // The gpu-nodes answer: an attention node the step waits on may
          // not (its sequences then move; the gpu-node's own attention
          // timeout ends the step, naming it), or the step is slow.
          const hung = await this.markUnresponsive(attentionAddresses(req), "attention node", req.stepId, waitedMs);
          attentionHung ||= hung.length > 0;
          if (attentionHung || waitedMs < ctx.options.retryTimeoutMs) {
            ctx.options.log(
              `step ${req.stepId}: no answer from gpu-node ${ctx.gpu.address} within ${waitedMs} ms; ` +
                (hung.length > 0
                  ? `attention node(s) ${hung.join(", ")} down or answering no health check (marked lost); `
                  : "") +
                `the gpu-nodes answer health checks: waiting up to ${deadlineMs} ms more`,
            );
            continue;
          }
        }
        step.abort();
        answer.catch(() => undefined);
        const who = marked.length > 0 ? marked.join(", ") : ctx.gpu.address;
        return {
          marked,
          missed:
            `DEADLINE_EXCEEDED: gpu-node ${who} did not answer step ${req.stepId} within ${waitedMs} ms` +
            (marked.length > 0 ? " nor a health check; marked lost until it answers again" : ""),
        };
      }
    } finally {
      ctx.signal.removeEventListener("abort", onAbort);
    }
  }

  /** Records an answered step's round trip, in seconds. */
  record(isDecode: boolean, seconds: number): void {
    this.histogram(isDecode).record(Math.max(1, Math.round(seconds * 1e6)));
  }

  /**
   * The deadline of the next step of this kind, in ms: max(stepDeadlineMs,
   * stepDeadlineFactor × p99), the p99 counting once 20 steps of the kind were answered.
   */
  deadlineMs(isDecode: boolean): number {
    const { stepDeadlineMs, stepDeadlineFactor } = this.ctx.options;
    const h = this.histogram(isDecode);
    const p99Ms = h.count >= MIN_SAMPLES ? h.percentile(99) / 1000 : 0;
    return Math.max(stepDeadlineMs, Math.ceil(stepDeadlineFactor * p99Ms));
  }

  /**
   * After step `stepId` got no answer in `waitedMs`: marks every node of
   * `addresses` that does not answer a health check SERVING (within 1 s)
   * lost, with a reason naming the step. Returns those marked, and those
   * of `addresses` that were down already.
   */
  private async markUnresponsive(
    addresses: readonly string[],
    what: string,
    stepId: bigint,
    waitedMs: number,
  ): Promise<string[]> {
    const { membership } = this.ctx;
    const marked: string[] = [];
    await Promise.all(
      addresses.map(async (address) => {
        const role = membership.roleOf(address);
        if (!role) return;
        if (membership.isDown(address)) return void marked.push(address);
        const health = await checkHealth(address, ROLES[role].service, HEALTH_CHECK_MS);
        if (health === "SERVING") return;
        membership.markDown(
          address,
          `DEADLINE_EXCEEDED: step ${stepId} got no answer within ${waitedMs} ms and ${what} ${address} ` +
            `answers no health check (${health})`,
        );
        marked.push(address);
      }),
    );
    return marked;
  }

  private histogram(isDecode: boolean): RecordableHistogram {
    return isDecode ? this.times.decode : this.times.prefill;
  }
}

/** The attention nodes a step's sequences read their KV from (attention_address or shards), once each. */
function attentionAddresses(req: StepRequest): string[] {
  const out = new Set<string>();
  for (const s of req.sequences ?? []) {
    if (s.attentionAddress) out.add(s.attentionAddress);
    for (const sh of s.shards ?? []) if (sh.address) out.add(sh.address);
  }
  return [...out];
}
