/**
 * The step runner of a gpu-node: one ForwardRequest through this stage's
 * layer range. The step is planned (step-plan.ts), split into micro-batches
 * that each run their own layer loop (dense graphs on onnxruntime, one
 * Attend call per attention node and KV-head group per layer: attend-layer.ts),
 * and answered with the logits rows the sequences ask for (the last stage)
 * or hidden states, which go on to the next pipeline stage when the request
 * names `next_stages` (downstream.ts). Failures are answered as the step's
 * NodeError (step-error.ts), never thrown.
 */
import { performance } from "node:perf_hooks";
import { ROOT_CONTEXT, context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { LATENCY_BUCKETS_SECONDS, lazyInstruments } from "@tessera/telemetry";
import { f32Tensor, wireTensor } from "@tessera/core";
import {
  Code,
  NodeErrorReason,
  RpcError,
  endSpanWhen,
  failSpan,
  messageContext,
  type ForwardRequest,
  type ForwardResponse,
  type ForwardResponseSchema,
  type MessageInitShape,
} from "@tessera/proto";
import { attendLayer } from "./attend-layer.js";
import type { AttendStreams } from "./attend-streams.js";
import type { DenseModel, Qkv } from "./dense-model.js";
import { DownstreamError, type Downstreams } from "./downstream.js";
import type { LoadedModel } from "./loaded-model.js";
import { checkStageModel, type NodeLease } from "./model-lease.js";
import type { CompiledGpuNodeOptions } from "./options.js";
import { StepClock } from "./step-clock.js";
import { StepError, reasonOfCode, toNodeError, type StepNodeError } from "./step-error.js";
import { checkNextStages, planStep, splitMicroBatches, type MicroBatch } from "./step-plan.js";
import { Workspace } from "./workspace.js";

/** A ForwardResponse as a step answers it. */
export type StepAnswer = MessageInitShape<typeof ForwardResponseSchema>;

/** The StepTimings of this stage alone, as step() fills them (seconds). */
export interface OwnTimings {
  denseSeconds: number;
  attentionWaitSeconds: number;
  attentionComputeSeconds: number;
  totalSeconds: number;
}

/** What the step runners of a gpu-node share: its options, streams and model. */
export interface StepRunnerHost {
  readonly opts: CompiledGpuNodeOptions;
  /** Attend streams to attention nodes. */
  readonly streams: AttendStreams;
  /** Forward streams to later pipeline stages. */
  readonly downstream: Downstreams;
  /** This node's address (host:port), named in its errors. */
  address(): string;
  /** The service's lifecycle state; steps run only while "running". */
  state(): string;
  /** The model steps run on now, if any. */
  current(): LoadedModel | undefined;
  /** The model's lease: each step is a use of it. */
  readonly lease: NodeLease;
}

/** A micro-batch stopped before its next layer because another one failed. */
class Stopped extends Error {}

/** What the micro-batches of one step share. */
interface StepRun {
  req: ForwardRequest;
  model: DenseModel;
  /** [total_tokens, dim] input hidden states; undefined when this node embeds. */
  input: Float32Array | undefined;
  /** The step's output: [logit rows, vocab] logits or [total_tokens, dim] hidden. */
  out: Float32Array;
  clock: StepClock;
  timings: { attentionComputeSeconds: number };
  /** Set by the first failure: the others stop before their next layer. */
  state: { failed: boolean };
  /** Aborts when the step's caller is gone: the micro-batches stop before their next layer. */
  signal: AbortSignal | undefined;
}

const tracer = trace.getTracer("@tessera/gpu-node");

const instruments = lazyInstruments("@tessera/gpu-node", (meter) => ({
  stage: meter.createHistogram("tessera.gpu.step_seconds", {
    description:
      "This gpu-node's own part of each step (its layer range): dense compute, waiting on attention nodes, and in total",
    unit: "s",
    advice: { explicitBucketBoundaries: [...LATENCY_BUCKETS_SECONDS] },
  }),
}));

/**
 * Records a step's own timings in `tessera_gpu_step_seconds`, label
 * `tessera_stage` = "dense", "attention_wait" or "total" (seconds).
 */
function recordStageTimings(t: OwnTimings): void {
  const h = instruments().stage;
  h.record(t.denseSeconds, { "tessera.stage": "dense" });
  h.record(t.attentionWaitSeconds, { "tessera.stage": "attention_wait" });
  h.record(t.totalSeconds, { "tessera.stage": "total" });
}

/**
 * Runs the steps of one Forward stream, reusing its buffers from step to
 * step: one {@link Workspace} per micro-batch slot in flight, so
 * concurrent micro-batches never share a buffer.
 */
export class StepRunner {
  private readonly slots: Workspace[] = [];

  constructor(private readonly host: StepRunnerHost) {}

  /**
   * {@link step} under a "tessera.gpu.forward" span when the request carried
   * a (sampled) trace context; the step's micro-batches and layers are its
   * children, and its Attend and downstream Forward messages carry it on.
   */
  tracedStep(req: ForwardRequest, signal?: AbortSignal): Promise<StepAnswer> {
    const parent = messageContext(req);
    // Untraced steps run under no context: nothing from another job's step leaks into them.
    if (!parent) return context.with(ROOT_CONTEXT, () => this.step(req, signal));
    const model = this.host.current()?.model;
    const attributes = {
      "tessera.step_id": Number(req.stepId),
      "tessera.batch.size": req.sequences.length,
      "tessera.batch.tokens": req.sequences.reduce((t, q) => t + q.nTokens, 0),
      "tessera.positions.max": Math.max(0, ...req.sequences.map((q) => q.startPos + q.nTokens)),
      "tessera.layer_start": model?.layerStart ?? 0,
      "tessera.layer_end": model?.layerEnd ?? 0,
      "tessera.micro_batches": this.host.opts.microBatches,
      "tessera.next_stages": req.nextStages.length,
      "tessera.wire.bytes_received": req.hidden?.data.byteLength ?? req.tokens.length * 4,
    };
    return tracer.startActiveSpan("tessera.gpu.forward", { kind: SpanKind.SERVER, attributes }, parent, (span) =>
      endSpanWhen(span, this.step(req, signal), (res) => {
        const out = res.logits ?? res.hidden;
        span.setAttribute("tessera.wire.bytes_sent", out?.data?.byteLength ?? 0);
        if (res.timings) {
          span.setAttributes({
            "tessera.gpu.dense_seconds": res.timings.denseSeconds ?? 0,
            "tessera.gpu.attention_wait_seconds": res.timings.attentionWaitSeconds ?? 0,
            "tessera.gpu.attention_compute_seconds": res.timings.attentionComputeSeconds ?? 0,
          });
        }
        if (res.error) span.setStatus({ code: SpanStatusCode.ERROR, message: res.error.message });
      }),
    );
  }

  /**
   * Runs one step on this stage's layer range and, when the request names
   * `next_stages`, sends the hidden states on to the first of them (see
   * {@link passDown}). Never throws: a failure is the response's `error`
   * (UNAVAILABLE with reason CANCELLED while the node is not running,
   * FAILED_PRECONDITION with reason MODEL_NOT_LOADED before a Load, or
   * with reason MODEL_MISMATCH when the node holds another model or range
   * than `req.model` names). When `signal` aborts (the Forward stream's
   * caller is gone) the step stops before its next layer (CANCELLED,
   * logged), and goes to no later stage.
   */
  async step(req: ForwardRequest, signal?: AbortSignal): Promise<StepAnswer> {
    const host = this.host;
    const t0 = performance.now();
    const timings = { denseSeconds: 0, attentionWaitSeconds: 0, attentionComputeSeconds: 0, totalSeconds: 0 };
    const loaded = host.current();
    const clock = new StepClock();
    let own: StepAnswer;
    try {
      const self = host.address();
      if (host.state() !== "running")
        throw new StepError(
          Code.UNAVAILABLE,
          `gpu-node ${self} is ${host.state()}`,
          "gpu",
          self,
          NodeErrorReason.CANCELLED,
        );
      if (!loaded)
        throw new StepError(
          Code.FAILED_PRECONDITION,
          "no model is loaded: call Load first",
          "gpu",
          self,
          NodeErrorReason.MODEL_NOT_LOADED,
        );
      checkNextStages(req, loaded.model, self);
      checkStageModel(req, loaded, host.lease.holderIds, self);
      loaded.acquire();
      host.lease.begin();
      try {
        own = { stepId: req.stepId, ...(await this.run(req, loaded.model, clock, timings, signal)), timings };
      } finally {
        loaded.releaseLease();
        host.lease.end();
      }
    } catch (err) {
      own = { stepId: req.stepId, error: toNodeError(err, host.address()), timings };
      if (own.error?.reason === NodeErrorReason.CANCELLED && signal?.aborted)
        host.opts.log(`gpu-node ${host.address()}: ${own.error.message}`);
    } finally {
      timings.denseSeconds = clock.busySeconds;
      timings.attentionWaitSeconds = clock.idleSeconds;
      timings.totalSeconds = (performance.now() - t0) / 1000;
      recordStageTimings(timings);
    }
    if (own.error || req.nextStages.length === 0 || signal?.aborted) return { ...own, stageTimings: [timings] };
    return this.passDown(req, own.hidden, timings, t0);
  }

  /**
   * Sends this stage's output `hidden` ([total_tokens, dim], in the dtype
   * run() produced it, passed on as the same message: no copy) to
   * next_stages[0] with next_stages[1:], over this node's stream to that
   * stage, and answers with its response: logits, or its error unchanged,
   * so role, address and reason name the node that failed. Timings: dense
   * and attention figures summed over the stages, total_seconds this stage's
   * wall time from request to answer (later stages and hops included);
   * stage_timings this stage's own followed by the later stages'.
   * A stage that cannot be reached fails the step with role "gpu", its
   * address and reason UNREACHABLE (UNAVAILABLE, or DEADLINE_EXCEEDED after
   * downstreamTimeoutMs); this node closing meanwhile is CANCELLED.
   */
  private async passDown(
    req: ForwardRequest,
    hidden: StepAnswer["hidden"],
    timings: OwnTimings,
    t0: number,
  ): Promise<StepAnswer> {
    const [next, ...rest] = req.nextStages as [string, ...string[]];
    const [model, ...restModels] = req.nextStageModels;
    const elapsed = () => (performance.now() - t0) / 1000;
    let down: ForwardResponse;
    try {
      down = await this.host.downstream.forward(next, {
        stepId: req.stepId,
        sequences: req.sequences,
        ...(hidden ? { hidden } : {}),
        nextStages: rest,
        ...(model ? { model, nextStageModels: restModels } : {}),
      });
    } catch (err) {
      const error = downstreamNodeError(err, this.host.address());
      return { stepId: req.stepId, error, timings: { ...timings, totalSeconds: elapsed() }, stageTimings: [timings] };
    }
    const d = down.timings;
    return {
      stepId: req.stepId,
      ...(down.logits ? { logits: down.logits } : {}),
      ...(down.hidden ? { hidden: down.hidden } : {}),
      ...(down.error ? { error: down.error } : {}),
      timings: {
        denseSeconds: timings.denseSeconds + (d?.denseSeconds ?? 0),
        attentionWaitSeconds: timings.attentionWaitSeconds + (d?.attentionWaitSeconds ?? 0),
        attentionComputeSeconds: timings.attentionComputeSeconds + (d?.attentionComputeSeconds ?? 0),
        totalSeconds: elapsed(),
      },
      stageTimings: [timings, ...(down.stageTimings.length > 0 ? down.stageTimings : d ? [d] : [])],
    };
  }

  /**
   * Splits the step into micro-batches and runs them, at most
   * `maxInFlight` at once; each writes its rows of the step's output
   * (logits or hidden), so they come back in the request's order. The
   * first failure stops micro-batches from starting (or going on to their
   * next layer); the step fails with the error of the earliest failed
   * micro-batch once all that started have stopped, so no buffer or
   * Attend reply of this step outlives it.
   */
  private async run(
    req: ForwardRequest,
    model: DenseModel,
    clock: StepClock,
    timings: { attentionComputeSeconds: number },
    signal: AbortSignal | undefined,
  ): Promise<Pick<StepAnswer, "logits" | "hidden">> {
    const { opts } = this.host;
    const { dim, vocabSize } = model.shape;
    const plan = planStep(req, model, this.host.address());
    const T = plan.totalTokens;
    const out = model.hasHead ? new Float32Array(plan.logitRows * vocabSize) : new Float32Array(T * dim);
    const batches = splitMicroBatches(plan.sequences, opts.microBatches);
    const errors: unknown[] = [];
    const run: StepRun = { req, model, input: plan.hidden, out, clock, timings, state: { failed: false }, signal };
    let next = 0;
    const tracing = trace.getActiveSpan()?.isRecording() === true;
    const worker = async (ws: Workspace) => {
      while (!run.state.failed && next < batches.length) {
        const i = next++;
        const mb = batches[i]!;
        const span = tracing
          ? tracer.startSpan("tessera.gpu.micro_batch", {
              attributes: {
                "tessera.micro_batch": i,
                "tessera.micro_batches": batches.length,
                "tessera.batch.size": mb.sequences.length,
                "tessera.batch.tokens": mb.rows,
                "tessera.attention.nodes": mb.nodes.length,
              },
            })
          : undefined;
        clock.start();
        try {
          const go = () => this.runMicroBatch(run, mb, ws);
          await (span ? context.with(trace.setSpan(context.active(), span), go) : go());
        } catch (err) {
          run.state.failed = true;
          errors[i] = err;
          failSpan(span, err);
        } finally {
          clock.end();
          span?.end();
        }
      }
    };
    const slots = Math.min(opts.maxInFlight, batches.length);
    for (let i = this.slots.length; i < slots; i++) this.slots.push(new Workspace());
    await Promise.all(this.slots.slice(0, slots).map(worker));
    if (run.state.failed) throw errors.find((e) => e !== undefined && !(e instanceof Stopped));
    // Logits stay f32 (sampling needs them exact); hidden states go in the wire dtype.
    return model.hasHead
      ? { logits: f32Tensor(out, [plan.logitRows, vocabSize]) }
      : { hidden: wireTensor(out, [T, dim], opts.wireDtype) };
  }

  /** The layer loop of one micro-batch: its rows of the input in, its rows of `out` written. */
  private async runMicroBatch(run: StepRun, mb: MicroBatch, ws: Workspace): Promise<void> {
    const { req, model, input, out } = run;
    const { dim, nHeads, nKvHeads, headDim } = model.shape;
    const qDim = nHeads * headDim;
    const kvD = nKvHeads * headDim;
    const T = mb.rows;

    let x: Float32Array;
    if (input) {
      x = input.subarray(mb.row0 * dim, (mb.row0 + T) * dim);
    } else {
      x = model.embed(req.tokens.slice(mb.row0, mb.row0 + T), ws.buf("xa", T * dim));
    }
    const positions = ws.positions(T);
    for (const s of mb.sequences) {
      for (let j = 0; j < s.nTokens; j++) positions[s.row0 + j] = BigInt(s.startPos + j);
    }

    // Per-layer spans only under a recorded (sampled) micro-batch span.
    const tracing = trace.getActiveSpan()?.isRecording() === true;
    // The same for every layer of the micro-batch.
    const { streams, opts } = this.host;
    const shape = { nHeads, nKvHeads, headDim };
    const dtype = opts.wireDtype;
    for (let layer = model.layerStart; layer < model.layerEnd; layer++) {
      if (run.state.failed) throw new Stopped();
      if (run.signal?.aborted) throw abandoned(req.stepId, layer, model, this.host.address());
      const span = tracing
        ? tracer.startSpan("tessera.gpu.layer", { attributes: { "tessera.layer": layer, "tessera.rows": T } })
        : undefined;
      // A layer that throws (a failed graph, a bad reply) still ends its span.
      const failLayer = (err: unknown): never => {
        failSpan(span, err);
        span?.end();
        throw err;
      };
      const qkv: Qkv = await model
        .pre(layer, x, positions, {
          q: ws.buf("q", T * qDim),
          k: ws.buf("k", T * kvD),
          v: ws.buf("v", T * kvD),
        })
        .catch(failLayer);
      const o = await attendLayer(
        { stepId: req.stepId, layer, mb, shape, dtype, ws, streams, clock: run.clock, timings: run.timings, span },
        qkv,
      );
      // The last layer of a non-head stage writes straight into the step's
      // (fresh) hidden output: it goes out in the response, and grpc-js
      // may serialise it after the next step starts.
      const last = layer === model.layerEnd - 1;
      const y =
        last && !model.hasHead
          ? out.subarray(mb.row0 * dim, (mb.row0 + T) * dim)
          : ws.buf(ws.owns(x, "xa") ? "xb" : "xa", T * dim);
      x = await model.post(layer, x, o, y);
    }

    if (!model.hasHead) {
      if (x.buffer !== out.buffer) out.set(x, mb.row0 * dim);
      return;
    }
    await applyHead(model, mb, x, out, ws);
  }
}

/**
 * The head of one micro-batch: the logits of each sequence's last
 * `logitRows` positions of `x` ([mb.rows, dim]), sequence after sequence in
 * position order, written to the micro-batch's rows of the step's logits
 * `out` (from row `mb.logitRow0`). The rows are gathered into this slot's
 * "last" buffer unless they are all of `x`.
 */
async function applyHead(
  model: DenseModel,
  mb: MicroBatch,
  x: Float32Array,
  out: Float32Array,
  ws: Workspace,
): Promise<void> {
  const { dim, vocabSize } = model.shape;
  let rows = x;
  if (mb.logitRows !== mb.rows) {
    rows = ws.buf("last", mb.logitRows * dim);
    let at = 0;
    for (const s of mb.sequences) {
      const end = s.row0 + s.nTokens;
      rows.set(x.subarray((end - s.logitRows) * dim, end * dim), at * dim);
      at += s.logitRows;
    }
  }
  await model.head(rows, out.subarray(mb.logitRow0 * vocabSize, (mb.logitRow0 + mb.logitRows) * vocabSize));
}

/**
 * The error of a step its caller abandoned (the Forward stream was
 * cancelled): CANCELLED, reason CANCELLED, saying where it stopped.
 */
function abandoned(stepId: bigint, layer: number, model: DenseModel, self: string): StepError {
  return new StepError(
    Code.CANCELLED,
    `step ${stepId} stopped before layer ${layer} of [${model.layerStart}, ${model.layerEnd}): its caller cancelled the Forward stream`,
    "gpu",
    self,
    NodeErrorReason.CANCELLED,
  );
}

/**
 * A failed send to the next stage as the step's NodeError: a
 * {@link DownstreamError} names that gpu-node (reason by its code:
 * UNREACHABLE when unreachable or timed out); anything else is this node's,
 * CANCELLED when it is UNAVAILABLE (this node closing its streams).
 */
function downstreamNodeError(err: unknown, self: string): StepNodeError {
  if (err instanceof DownstreamError)
    return {
      code: err.code,
      message: err.message,
      role: "gpu",
      address: err.address,
      reason: reasonOfCode(err.code),
      seqId: "",
    };
  const error = toNodeError(err, self);
  if (RpcError.from(err).code === Code.UNAVAILABLE) error.reason = NodeErrorReason.CANCELLED;
  return error;
}
