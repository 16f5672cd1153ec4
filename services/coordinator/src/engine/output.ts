/**
 * The output phase (vLLM v1's `update_from_output()`): after a step, feeds
 * each sequence's positions, samples its next token from its logits
 * (llama2.c run.c's sampler), detokenises, finishes sequences (a Result
 * event each), and keeps the job's progress, metrics and the Summary.
 */
import type { JobPlan, StepTimings } from "@tessera/proto";
import { recordJobCost, recordTokens } from "../metrics.js";
import type { BatchJob } from "./context.js";
import { finished, kvNodes, prefillEnd, type FinishReason, type Sequence } from "./sequence.js";
import type { StepPlan } from "./step-plan.js";

/** Totals of decode steps, in seconds. */
interface Breakdown {
  steps: number;
  stepSeconds: number;
  denseSeconds: number;
  attentionComputeSeconds: number;
  attentionWaitSeconds: number;
  gpuTotalSeconds: number;
}

/** One job's output phase and counters (see the file comment). */
export class Output {
  /** Prompt tokens of every tokenised prompt. */
  promptTokens = 0;
  private done = 0;
  private generatedTotal = 0;
  private decodeTokens = 0;
  private decodeStart: number | undefined;
  private lastProgress = 0;
  private readonly t0 = performance.now();
  private readonly breakdown: Breakdown = {
    steps: 0,
    stepSeconds: 0,
    denseSeconds: 0,
    attentionComputeSeconds: 0,
    attentionWaitSeconds: 0,
    gpuTotalSeconds: 0,
  };

  /** @param release frees a finished sequence's KV cache (in the background). */
  constructor(
    private readonly job: BatchJob,
    private readonly release: (s: Sequence) => void,
  ) {}

  /** Finishes `s` (no-op when finished already): flushes its text, emits its Result and progress, frees its KV cache. */
  finish(s: Sequence, reason: FinishReason, error?: string): void {
    if (!finished(s, reason)) return;
    this.job.ctx.requests.finished(s, reason);
    s.completion += s.decoder?.flush() ?? "";
    const now = performance.now();
    const first = s.firstTokenAt ?? now;
    this.done++;
    this.job.ctx.emit({
      event: {
        case: "result",
        value: {
          id: s.id,
          prompt: s.prompt,
          completion: s.completion,
          promptTokenIds: s.promptIds,
          completionTokenIds: s.generated,
          finishReason: reason,
          error: error ?? "",
          timings: {
            prefillSeconds: (first - s.startedAt) / 1000,
            decodeSeconds: (now - first) / 1000,
            totalSeconds: (now - s.startedAt) / 1000,
          },
          kvNode: kvNodes(s),
        },
      },
    });
    this.progress(true);
    this.release(s);
  }

  /** Marks the first decode step (decode tokens/s count from here). */
  decodeStarted(): void {
    this.decodeStart ??= performance.now();
  }

  /** Adds a decode step's timings (seconds) to the Summary's breakdown; `stepSeconds` as the coordinator saw it. */
  recordDecodeStep(stepSeconds: number, t: StepTimings): void {
    const b = this.breakdown;
    b.steps++;
    b.stepSeconds += stepSeconds;
    b.denseSeconds += t.denseSeconds;
    b.attentionComputeSeconds += t.attentionComputeSeconds;
    b.attentionWaitSeconds += t.attentionWaitSeconds;
    b.gpuTotalSeconds += t.totalSeconds;
  }

  /**
   * Applies a step's answer: every sequence of `plan` with rows (and not
   * moved or finished meanwhile) has its tokens fed; once every known
   * token is in (not after a rebuild's chunks) it samples its next token
   * from its last row.
   */
  update(plan: StepPlan, rows: ReadonlyMap<Sequence, readonly Float32Array[]>): void {
    for (const p of plan.parts) {
      const r = rows.get(p.seq);
      if (!r || p.seq.finished || p.seq.seqId !== p.seqId) continue;
      const s = p.seq;
      const decoding = s.fed >= prefillEnd(s);
      s.fed += p.tokens.length;
      if (decoding) this.decodeTokens++;
      if (s.fed === s.promptIds.length + s.generated.length) this.accept(s, r[r.length - 1]!);
    }
    this.progress();
  }

  /** Samples `s`'s next token from `logits` [vocab_size]; finishes it on BOS/EOS or at max tokens. */
  private accept(s: Sequence, logits: Float32Array): void {
    const { tokenizer } = this.job.ctx.model;
    const token = s.sampler!.sample(logits);
    const now = performance.now();
    const stop = token === tokenizer.bos || token === tokenizer.eos;
    this.job.ctx.requests.sampled(s, now, !stop);
    s.firstTokenAt ??= now;
    if (stop) return this.finish(s, "stop");
    s.generated.push(token);
    this.generatedTotal++;
    recordTokens(1);
    const text = s.decoder!.push(token);
    s.completion += text;
    if (this.job.ctx.onToken?.(s.id, token, text) === "stop") return this.finish(s, "stop");
    if (s.generated.length >= s.maxTokens) this.finish(s, "length");
  }

  /** Emits a Progress event, at most every 250 ms unless `force`. */
  progress(force = false): void {
    const now = performance.now();
    if (!force && now - this.lastProgress < 250) return;
    this.lastProgress = now;
    const elapsed = (now - this.t0) / 1000;
    this.job.ctx.emit({
      event: {
        case: "progress",
        value: {
          promptsDone: this.done,
          promptsTotal: this.job.request.prompts.length,
          tokensGenerated: BigInt(this.generatedTotal),
          elapsedSeconds: elapsed,
          tokensPerSecond: elapsed > 0 ? this.generatedTotal / elapsed : 0,
        },
      },
    });
  }

  /** Records the job's cost metric and emits the Summary event (with `plan`, the job's last). */
  summary(plan: JobPlan | undefined): void {
    const b = this.breakdown;
    const decodeSeconds = this.decodeStart === undefined ? 0 : (performance.now() - this.decodeStart) / 1000;
    const wallSeconds = (performance.now() - this.t0) / 1000;
    recordJobCost(plan?.pricePerHour ?? 0, wallSeconds, this.generatedTotal);
    this.job.ctx.emit({
      event: {
        case: "summary",
        value: {
          prompts: this.job.request.prompts.length,
          errors: this.job.seqs.filter((s) => s.finished === "error").length,
          promptTokens: BigInt(this.promptTokens),
          completionTokens: BigInt(this.generatedTotal),
          wallSeconds,
          decodeTokensPerSecond: decodeSeconds > 0 ? this.decodeTokens / decodeSeconds : 0,
          ...(plan ? { plan } : {}),
          decodeBreakdown: {
            steps: b.steps,
            stepSeconds: b.stepSeconds,
            denseSeconds: b.denseSeconds,
            attentionComputeSeconds: b.attentionComputeSeconds,
            attentionWireSeconds: Math.max(0, b.attentionWaitSeconds - b.attentionComputeSeconds),
            coordinatorSeconds: Math.max(0, b.stepSeconds - b.gpuTotalSeconds),
          },
        },
      },
    });
  }
}
