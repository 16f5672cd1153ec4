/**
 * Runs one batch of prompts through the cluster: tokenise, admit sequences
 * into the running batch (at most `maxBatchSequences`, as KV capacity
 * allows; more join as others finish), then step until every one is done.
 * Each step carries, for every ready sequence, either its next prompt chunk
 * (prefill, at most `maxPrefillTokens` tokens per step over the batch) or
 * its last sampled token (decode); sampling is llama2.c run.c's; results are
 * detokenised and emitted as sequences finish.
 *
 * The engine runs in phases, as vLLM's v1 engine (`EngineCore.step()`):
 * the scheduler (scheduler.ts: admit, open, revive, re-plan, move) returns
 * a {@link StepPlan} (per sequence its start position, tokens and logit
 * rows wanted), the executor (executor.ts) sends it and returns a typed
 * outcome with each sequence's logit rows, and the output phase
 * (output.ts) samples, detokenises and finishes; a {@link Sequence}'s
 * state and transitions are in sequence.ts.
 *
 * Every sequence carries its own position, so a sequence whose attention
 * node fails simply waits (and is re-opened on that node when it answers
 * again, checking its KV cache survived) while the others keep going. A
 * memory-node failing longer than `failoverMs` (a storage-node: longer than
 * `retryTimeoutMs`) is marked lost in the cluster's {@link Membership}; so
 * is a node that is removed (RemoveNode). The job then re-plans: the
 * sequences with KV on that node move to the other attention nodes, where
 * their KV cache is rebuilt by prefilling prompt + tokens generated so far
 * (the last generated token is then decoded as before, and the sampler's
 * state is kept, so the tokens are those of an undisturbed run). A
 * sequence whose KV is found lost on re-open (a restarted memory-node)
 * moves the same way. A node that joins (AddNode) or comes back is used for
 * sequences placed from then on; nothing running moves to it. Only a
 * sequence that finds no attention node of its role for `retryTimeoutMs`,
 * or whose node reports a non-transient error, fails.
 *
 * With `kvHeadGroups` > 1 a sequence's KV heads are split into that many
 * groups (shards), each opened as a sequence of its own (id
 * `<seq>#h<start>-<end>`, layout with the group's heads) on its own
 * attention node where there are enough (HeadInfer's head-wise split). A
 * sequence is open when all its shards are; a failing shard's node makes the
 * whole sequence wait or fail, and every shard is re-opened and closed with
 * it.
 *
 * At job start, and at every re-plan, the job asks every attention node up
 * its Info (price, read bandwidth, profile, capacity, use) and plans with
 * packages/scheduler's planner (job-plan.ts, called from replan.ts): the
 * plan's KV shares say how many sequences each node holds, and placement
 * follows them (see placeSequences); each plan is sent as a Plan event and
 * logged, as is each placement wave. A node that does not answer at all at
 * job start is marked lost at once.
 */
import { context, TraceFlags, trace, type Span } from "@opentelemetry/api";
import { endSpanWhen, Code, RpcError, type GenerateRequest, type Result } from "@tessera/proto";
import { splitKvHeads } from "../placement.js";
import type { BatchContext, BatchJob } from "./context.js";
import { RequestSpans } from "./genai-spans.js";
import { StepExecutor } from "./executor.js";
import { Output } from "./output.js";
import { createSequences } from "./prompts.js";
import { Scheduler } from "./scheduler.js";
import type { Sequence } from "./sequence.js";
import type { StepPlan } from "./step-plan.js";

const tracer = trace.getTracer("@tessera/coordinator");

/**
 * Runs `request` to completion. Bad prompts (too long, unplaceable,
 * untokenisable) get an error Result and the rest go on; see the file
 * comment for node failures. Every KV cache the job opened is closed before
 * it returns, however it ends. Under a recording span (a sampled job) the
 * run is a "tessera.batch" span with a span per step (see traceStepEvery)
 * and, beside them, a GenAI span per prompt (genai-spans.ts).
 * @throws RpcError CANCELLED when `ctx.signal` aborts; INVALID_ARGUMENT when
 * kvHeadGroups does not divide the model's n_kv_heads.
 */
export function runBatch(request: GenerateRequest, ctx: BatchContext): Promise<void> {
  const parent = trace.getSpan(context.active());
  // Tracing off (no SDK) or this job not sampled: no spans at all.
  if (!parent?.isRecording()) return runEngine(request, ctx, undefined);
  const attributes = {
    "tessera.job_id": request.jobId,
    "tessera.batch.prompts": request.prompts.length,
    "tessera.batch.max_sequences": ctx.options.maxBatchSequences,
    "tessera.kv_head_groups": ctx.options.kvHeadGroups,
    "tessera.stages": ctx.stages.map((s) => `${s.address}[${s.range.start},${s.range.end})`),
  };
  return tracer.startActiveSpan("tessera.batch", { attributes }, async (span) => {
    const emit = ctx.emit;
    const model = ctx.genai?.model ?? request.modelPath;
    const requestSpans = new RequestSpans(request, model, ctx.genai?.operation ?? "text_completion");
    const traced: BatchContext = {
      ...ctx,
      emit: (event) => {
        if (event.event?.case === "result") requestSpans.result(event.event.value as Result, model);
        if (event.event?.case === "summary") {
          const v = event.event.value;
          span.setAttributes({
            "tessera.batch.prompt_tokens": Number(v.promptTokens ?? 0),
            "tessera.batch.completion_tokens": Number(v.completionTokens ?? 0),
            "tessera.batch.errors": v.errors ?? 0,
            "tessera.decode.tokens_per_second": v.decodeTokensPerSecond ?? 0,
            "tessera.decode.steps": v.decodeBreakdown?.steps ?? 0,
          });
        }
        emit(event);
      },
    };
    const running = runEngine(request, traced, span).then(
      () => requestSpans.endAll(undefined),
      (err: unknown) => {
        requestSpans.endAll(err);
        throw err;
      },
    );
    await endSpanWhen(span, running);
  });
}

async function runEngine(request: GenerateRequest, ctx: BatchContext, batchSpan: Span | undefined): Promise<void> {
  await new BatchEngine(request, ctx, batchSpan).run();
}

/**
 * Every how many decode steps of a job one is traced
 * (TESSERA_TRACE_STEP_EVERY, a positive integer; @default 64: every 16th
 * step cost 6-11% of decode tokens/s on stories260K, docs/performance.md). Prefill
 * steps are always traced. The others run under the job's span context
 * marked not sampled, so no node records them either: per-token spans at
 * every step would cost more than the 5% of decode throughput tracing may.
 * @throws ConfigError-like Error naming the variable when it is not a positive integer.
 */
export function traceStepEvery(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.TESSERA_TRACE_STEP_EVERY?.trim();
  if (!raw) return 64;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`TESSERA_TRACE_STEP_EVERY: must be a positive integer, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/** One batch run: its phases and the step loop (see the file comment). */
class BatchEngine {
  private readonly job: BatchJob;
  private readonly output: Output;
  private readonly scheduler: Scheduler;
  private readonly executor: StepExecutor;
  /** One span per prefill step and per `stepEvery`-th decode step (see traceStepEvery). */
  private readonly stepEvery: number;
  private decodeSteps = 0;

  constructor(
    request: GenerateRequest,
    ctx: BatchContext,
    private readonly batchSpan: Span | undefined,
  ) {
    const { shape } = ctx.model.header;
    try {
      splitKvHeads(shape.nKvHeads, ctx.options.kvHeadGroups);
    } catch (err) {
      throw new RpcError(Code.INVALID_ARGUMENT, (err as Error).message, { cause: err });
    }
    this.job = {
      request,
      ctx,
      jobId: request.jobId || `job-${Date.now().toString(36)}`,
      // The nonce keeps two jobs with the same id (or a retried job) from
      // ever sharing a KV cache on an attention node.
      nonce: Math.random().toString(36).slice(2, 8),
      groups: ctx.options.kvHeadGroups,
      seqs: [],
    };
    ctx.requests.attach(this.job.seqs);
    // The scheduler first: a prompt finished while it is read (too long,
    // no tokens wanted) is released through it like any other.
    this.scheduler = new Scheduler(this.job);
    this.output = new Output(this.job, (s) => this.scheduler.kv.release(s));
    this.executor = new StepExecutor(this.job);
    this.stepEvery = batchSpan ? traceStepEvery() : 1;
  }

  /** Steps until every sequence is done, then emits the Summary. */
  async run(): Promise<void> {
    const { scheduler, output } = this;
    // Off the constructor: tokenising yields to the event loop and stops
    // when the job is cancelled (before anything is opened on a node).
    await createSequences(this.job, output);
    scheduler.start(output);
    try {
      await scheduler.planner.replan("job start", 0);
      scheduler.followMembership();
      // Step until every sequence is done: decode for sequences whose
      // prompt is in, prefill chunks (within the token budget) for the rest.
      for (;;) {
        await scheduler.admit();
        await scheduler.revive();
        if (scheduler.done()) break;
        const plan = scheduler.plan();
        if (plan.parts.length === 0) {
          await scheduler.idle();
          continue;
        }
        if (plan.isDecode) output.decodeStarted();
        output.update(plan, await this.tracedStep(plan));
      }
    } finally {
      await scheduler.stop();
      // However the job ends, free every KV cache it opened, and wait for the
      // nodes to confirm (each call is bounded by connectTimeoutMs).
      for (const s of this.job.seqs) scheduler.kv.release(s);
      await Promise.allSettled([...scheduler.kv.releases]);
    }
    output.summary(scheduler.planner.lastPlan);
  }

  /**
   * Runs one step. Returns the logit rows of each sequence that was in the
   * send that succeeded; sequences of a failing attention node are left
   * waiting (or finished) and the step is re-sent without them.
   */
  private async step(plan: StepPlan): Promise<Map<Sequence, Float32Array[]>> {
    const rows = new Map<Sequence, Float32Array[]>();
    for (;;) {
      if (this.job.ctx.signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
      const alive = this.scheduler.alive(plan);
      if (alive.length === 0) return rows;
      const outcome = await this.executor.execute(alive, plan.isDecode);
      switch (outcome.kind) {
        case "ok":
          alive.forEach((p, i) => rows.set(p.seq, outcome.rows[i]!));
          if (plan.isDecode && outcome.timings) this.output.recordDecodeStep(outcome.seconds, outcome.timings);
          return rows;
        case "resend":
          continue;
        case "attention-failed":
          this.scheduler.attentionFailed(outcome.node, outcome.error, outcome.parts, this.executor.stepId);
          continue;
        case "failed":
          for (const p of alive) this.output.finish(p.seq, "error", outcome.message);
          return rows;
      }
    }
  }

  /** step() in a prefill_step / decode_step span, or unsampled (see traceStepEvery). */
  private tracedStep(plan: StepPlan): Promise<Map<Sequence, Float32Array[]>> {
    const { batchSpan } = this;
    if (!batchSpan) return this.step(plan);
    const { isDecode, parts } = plan;
    const n = isDecode ? this.decodeSteps++ : 0;
    if (isDecode && n % this.stepEvery !== 0) {
      const unsampled = { ...batchSpan.spanContext(), traceFlags: TraceFlags.NONE };
      return context.with(trace.setSpanContext(context.active(), unsampled), () => this.step(plan));
    }
    const tokens = parts.reduce((t, p) => t + p.tokens.length, 0);
    const attributes = {
      "tessera.step.kind": isDecode ? "decode" : "prefill",
      "tessera.step.decode_index": n,
      "tessera.batch.size": parts.length,
      "tessera.batch.tokens": tokens,
      "tessera.positions.max": Math.max(...parts.map((p) => p.startPos + p.tokens.length)),
      "tessera.gpu.address": this.job.ctx.gpu.address,
    };
    return tracer.startActiveSpan(isDecode ? "tessera.decode_step" : "tessera.prefill_step", { attributes }, (span) =>
      endSpanWhen(span, this.step(plan), (rows) =>
        span.setAttributes({
          "tessera.step_id": Number(this.executor.stepId),
          "tessera.step.sequences_done": rows.size,
          "tessera.wire.bytes_sent": tokens * 4,
          "tessera.wire.bytes_received":
            [...rows.values()].reduce((b, r) => b + r.length, 0) * this.job.ctx.model.header.shape.vocabSize * 4,
        }),
      ),
    );
  }
}
