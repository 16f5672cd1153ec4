/**
 * The gpu-node service (tessera.v1.GpuNode): loads a layer range of a
 * llama2.c checkpoint into onnxruntime sessions and runs batched Forward
 * steps, calling the attention node of each sequence (or of each of its
 * KV-head groups, HeadInfer's split) directly over long-lived Attend
 * streams (ARCHITECTURE.md, "One decode step"), with activations in f16 or
 * f32 (`wireDtype`), and
 * handing its hidden states to the next pipeline stage over a Forward
 * stream of its own (downstream.ts).
 */
import { performance } from "node:perf_hooks";
import { ROOT_CONTEXT, context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { LATENCY_BUCKETS_SECONDS, lazyInstruments } from "@tessera/telemetry";
import {
  CheckpointError,
  ConfigError,
  f32Tensor,
  stridedWireTensor,
  tensorF32,
  wireTensor,
  type Service,
  type StridedBlock,
  type WireDtype,
} from "@tessera/core";
import { type ModelSource, openModel } from "@tessera/model";
import { createGrpcService } from "@tessera/rpc";
import {
  endSpanWhen,
  failSpan,
  Code,
  GpuNode as GpuNodeService,
  RpcError,
  addService,
  messageContext,
  type AttendResponse,
  type ForwardRequest,
  type ForwardResponse,
  type ForwardResponseSchema,
  type LoadRequest,
  type LoadResponseSchema,
  type MessageInitShape,
  type ServerDuplexStream,
  type NodeProfile,
} from "@tessera/proto";
import { AttendStreams, AttentionNodeError } from "./attend-streams.js";
import { DownstreamError, Downstreams } from "./downstream.js";
import { DenseModel, defaultWeightDtype, type ExecutionProvider, type Qkv } from "./dense-model.js";
import type { WeightDtype } from "./llama-graphs.js";
import { checkGpuProfile, profileGpuNode } from "./profile.js";

/** gRPC service name served (and reported by grpc.health.v1). */
export const GPU_NODE_SERVICE = "tessera.v1.GpuNode";

/** Options of a gpu-node, as a user gives them. */
export interface GpuNodeOptions {
  /** Interface to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number;
  /**
   * onnxruntime execution provider. "cuda" needs onnxruntime-node's CUDA
   * binaries (installed unless `onnxruntime-node-install=skip`); Load fails
   * FAILED_PRECONDITION when they are missing. @default "cpu"
   */
  executionProvider?: string;
  /** onnxruntime intra-op threads per session. @default onnxruntime's (one per physical core) */
  intraOpThreads?: number;
  /** Milliseconds one AttendRequest may wait for its response before its stream is failed. @default 120000 */
  attentionTimeoutMs?: number;
  /** Milliseconds `drain()` waits for running calls before forcing them closed. @default 5000 */
  shutdownGraceMs?: number;
  /**
   * Micro-batches a step's sequences are split into (whole sequences, about
   * equal tokens). Each runs its own layer loop, so while one waits for its
   * attention nodes another runs its dense graphs (Lamina, Chen et al. 2024,
   * "Efficient and Economic Large Language Model Inference with Attention
   * Offloading"). 1 runs the step as one batch. @default 1
   */
  microBatches?: number;
  /** Micro-batches of one step running at once (each holds its own work buffers). @default 2 */
  maxInFlight?: number;
  /**
   * Milliseconds a step sent to the next pipeline stage (ForwardRequest.next_stages)
   * may wait for its response, the later stages' whole step, before that
   * stream is failed (DEADLINE_EXCEEDED naming the stage). @default 300000
   */
  downstreamTimeoutMs?: number;
  /**
   * Dtype of the activations this node sends: q/k/v to attention nodes
   * (which answer o in the same dtype) and hidden states to the next
   * pipeline stage. "f16" halves the bytes on the wire (values rounded to
   * nearest even; see packages/core/src/tensor.ts); "f32" is exact. Logits
   * are always f32; received hidden states may be either. @default "f16"
   */
  wireDtype?: WireDtype;
  /**
   * Element type of the projection weights (and embedding) the node holds
   * (DenseModelOptions.weightDtype): "f16" halves their memory, "f32" keeps
   * them exact, "auto" picks by execution provider ("f16" on CUDA, "f32" on
   * CPU, whose onnxruntime kernels have no f16 MatMul on x86; see
   * defaultWeightDtype). @default "auto"
   */
  weightDtype?: "auto" | WeightDtype;
  /**
   * What this node costs, in US dollars per hour, advertised by Info (and
   * in its profile) for the coordinator's planner. 0 = unknown.
   * @default the given profile's price_per_hour, else 0
   */
  pricePerHour?: number;
  /**
   * The node's profile, advertised by Info: "measure" measures it in
   * `start()` before the port is bound ({@link profileGpuNode}, about 3 s
   * and 530 MiB of weight copies held meanwhile on two CPU cores), "off"
   * advertises none, a NodeProfile (of role
   * "gpu", e.g. read from a file `--profile-only` wrote) is advertised as
   * given, with profile_seconds 0 and this node's price. @default "off"
   */
  profile?: "measure" | "off" | NodeProfile;
}

/** {@link GpuNodeOptions} with defaults applied and validated; frozen. */
export interface CompiledGpuNodeOptions {
  readonly host: string;
  readonly port: number;
  readonly executionProvider: ExecutionProvider;
  readonly intraOpThreads: number | undefined;
  readonly attentionTimeoutMs: number;
  readonly shutdownGraceMs: number;
  readonly microBatches: number;
  readonly maxInFlight: number;
  readonly downstreamTimeoutMs: number;
  readonly wireDtype: WireDtype;
  /** The weight dtype in force ("auto" resolved by execution provider). */
  readonly weightDtype: WeightDtype;
  /** $/h; 0 = unknown. */
  readonly pricePerHour: number;
  /** "measure", "off" or the profile to advertise (role "gpu"). */
  readonly profile: "measure" | "off" | NodeProfile;
}

/**
 * Applies defaults and validates.
 * @throws ConfigError naming the first bad option.
 */
export function compileGpuNodeOptions(options: GpuNodeOptions = {}): CompiledGpuNodeOptions {
  const host = options.host ?? "127.0.0.1";
  if (typeof host !== "string" || host === "")
    throw new ConfigError("host", `must be a host name or address, got ${JSON.stringify(host)}`);
  const port = options.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new ConfigError("port", `must be an integer in [0, 65535], got ${port}`);
  const executionProvider = options.executionProvider ?? "cpu";
  if (executionProvider !== "cpu" && executionProvider !== "cuda") {
    throw new ConfigError("executionProvider", `must be "cpu" or "cuda", got ${JSON.stringify(executionProvider)}`);
  }
  const intraOpThreads = options.intraOpThreads;
  if (intraOpThreads !== undefined && !(Number.isInteger(intraOpThreads) && intraOpThreads >= 1)) {
    throw new ConfigError("intraOpThreads", `must be a positive integer, got ${intraOpThreads}`);
  }
  const positiveMs = (name: string, v: number) => {
    if (!(Number.isFinite(v) && v > 0))
      throw new ConfigError(name, `must be a positive number of milliseconds, got ${v}`);
    return v;
  };
  const positiveInt = (name: string, v: number) => {
    if (!(Number.isInteger(v) && v >= 1)) throw new ConfigError(name, `must be a positive integer, got ${v}`);
    return v;
  };
  const wireDtype = options.wireDtype ?? "f16";
  if (wireDtype !== "f16" && wireDtype !== "f32")
    throw new ConfigError("wireDtype", `must be "f16" or "f32", got ${JSON.stringify(wireDtype)}`);
  const weightDtype = options.weightDtype ?? "auto";
  if (weightDtype !== "auto" && weightDtype !== "f16" && weightDtype !== "f32")
    throw new ConfigError("weightDtype", `must be "auto", "f16" or "f32", got ${JSON.stringify(weightDtype)}`);
  const profile = options.profile ?? "off";
  if (typeof profile === "object") checkGpuProfile(profile);
  else if (profile !== "measure" && profile !== "off")
    throw new ConfigError("profile", `must be "measure", "off" or a NodeProfile, got ${JSON.stringify(profile)}`);
  const pricePerHour = options.pricePerHour ?? (typeof profile === "object" ? profile.pricePerHour : 0);
  if (!(typeof pricePerHour === "number" && Number.isFinite(pricePerHour) && pricePerHour >= 0))
    throw new ConfigError("pricePerHour", `must be a finite number >= 0, got ${String(pricePerHour)}`);
  return Object.freeze({
    pricePerHour,
    profile,
    host,
    port,
    executionProvider,
    wireDtype,
    weightDtype: weightDtype === "auto" ? defaultWeightDtype(executionProvider) : weightDtype,
    intraOpThreads,
    attentionTimeoutMs: positiveMs("attentionTimeoutMs", options.attentionTimeoutMs ?? 120_000),
    shutdownGraceMs: positiveMs("shutdownGraceMs", options.shutdownGraceMs ?? 5_000),
    microBatches: positiveInt("microBatches", options.microBatches ?? 1),
    maxInFlight: positiveInt("maxInFlight", options.maxInFlight ?? 2),
    downstreamTimeoutMs: positiveMs("downstreamTimeoutMs", options.downstreamTimeoutMs ?? 300_000),
  });
}

/**
 * A gpu-node: a {@link Service} of role "gpu" serving tessera.v1.GpuNode
 * and grpc.health.v1. `drain()` answers steps that arrive from then on with
 * UNAVAILABLE, lets running steps end (up to `shutdownGraceMs`) and ends the
 * Forward streams with OK; `close()` also fails pending attention calls,
 * closes the Attend streams and releases the onnxruntime sessions.
 */
export interface GpuNode extends Service {
  /** The options in force, with defaults applied. */
  readonly options: CompiledGpuNodeOptions;
}

/** A failed step: answered as ForwardResponse.error, the stream stays open. */
class StepError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly role: string,
    readonly address: string,
  ) {
    super(message);
  }
}

/** A loaded model with the steps using it, so a re-Load frees it only when they end. */
class LoadedModel {
  private active = 0;
  private retired = false;
  private freed: Promise<void> | undefined;
  private onFreed: (() => void) | undefined;

  constructor(
    readonly key: string,
    readonly model: DenseModel,
    readonly response: MessageInitShape<typeof LoadResponseSchema>,
  ) {}

  acquire(): void {
    this.active++;
  }

  releaseLease(): void {
    if (--this.active === 0 && this.retired) this.free();
  }

  /** Frees the sessions once no step uses them; resolves when freed. */
  retire(): Promise<void> {
    this.retired = true;
    this.freed ??= new Promise<void>((resolve) => (this.onFreed = resolve));
    if (this.active === 0) this.free();
    return this.freed;
  }

  private free(): void {
    const done = this.onFreed;
    this.onFreed = undefined;
    if (done) void this.model.release().finally(done);
  }
}

/**
 * Creates a gpu-node (not yet listening; call `start()`).
 * @throws ConfigError naming a bad option.
 */
export function createGpuNode(options: GpuNodeOptions = {}): GpuNode {
  const opts = compileGpuNodeOptions(options);
  let current: LoadedModel | undefined;
  let loadChain: Promise<unknown> = Promise.resolve();
  const retiring = new Set<Promise<void>>();
  const streams = new AttendStreams(opts.attentionTimeoutMs);
  const downstream = new Downstreams(opts.downstreamTimeoutMs);
  const forwards = new Set<{ stop(): Promise<void> }>();

  const address = () => service.address;

  function retire(m: LoadedModel | undefined): void {
    if (!m) return;
    const p = m.retire();
    retiring.add(p);
    void p.then(() => retiring.delete(p));
  }

  async function load(req: LoadRequest): Promise<MessageInitShape<typeof LoadResponseSchema>> {
    if (service.state !== "running") throw new RpcError(Code.UNAVAILABLE, `gpu-node ${address()} is ${service.state}`);
    const key = JSON.stringify([req.modelPath, req.layerStart, req.layerEnd, req.embed, req.head]);
    const run = loadChain.then(async () => {
      if (current?.key === key) return current.response;
      if (req.modelPath === "") throw new RpcError(Code.INVALID_ARGUMENT, "model_path is empty");
      const t0 = performance.now();
      let checkpoint: ModelSource; // tensors are read per layer by DenseModel.create
      try {
        checkpoint = await openModel(req.modelPath);
      } catch (err) {
        const enoent =
          err instanceof CheckpointError && (err.cause as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
        throw new RpcError(enoent ? Code.NOT_FOUND : Code.INVALID_ARGUMENT, (err as Error).message, { cause: err });
      }
      const { nLayers } = checkpoint.shape;
      if (!(req.layerStart <= req.layerEnd && req.layerEnd <= nLayers)) {
        throw new RpcError(
          Code.INVALID_ARGUMENT,
          `${req.modelPath}: layer range [${req.layerStart}, ${req.layerEnd}) is not inside its ${nLayers} layers`,
        );
      }
      if (req.layerStart === req.layerEnd && !req.embed && !req.head) {
        throw new RpcError(
          Code.INVALID_ARGUMENT,
          "empty load: no layers (layer_start == layer_end), no embed and no head",
        );
      }
      const model = await DenseModel.create(checkpoint, {
        layerStart: req.layerStart,
        layerEnd: req.layerEnd,
        embed: req.embed,
        head: req.head,
        executionProvider: opts.executionProvider,
        weightDtype: opts.weightDtype,
        ...(opts.intraOpThreads !== undefined ? { intraOpThreads: opts.intraOpThreads } : {}),
      }).catch((err: unknown) => {
        throw RpcError.from(err);
      });
      const s = checkpoint.shape;
      const response: MessageInitShape<typeof LoadResponseSchema> = {
        shape: {
          dim: s.dim,
          hiddenDim: s.hiddenDim,
          nLayers: s.nLayers,
          nHeads: s.nHeads,
          nKvHeads: s.nKvHeads,
          vocabSize: s.vocabSize,
          seqLen: s.seqLen,
          headDim: s.headDim,
          ropeTheta: s.ropeTheta,
          normEps: s.normEps,
        },
        executionProvider: model.executionProvider,
        weightBytes: BigInt(model.weightBytes),
        loadSeconds: (performance.now() - t0) / 1000,
      };
      if (service.state !== "running") {
        await model.release();
        throw new RpcError(Code.UNAVAILABLE, `gpu-node ${address()} is ${service.state}`);
      }
      const loaded = new LoadedModel(key, model, response);
      loaded.acquire(); // held by `current` until replaced or closed
      const old = current;
      current = loaded;
      if (old) {
        old.releaseLease();
        retire(old);
      }
      return response;
    });
    loadChain = run.catch(() => undefined);
    return run;
  }

  function forward(
    call: ServerDuplexStream<ForwardRequest, MessageInitShape<typeof ForwardResponseSchema>>,
  ): Promise<void> {
    const runner = new StepRunner();
    let chain = Promise.resolve();
    return new Promise<void>((resolve) => {
      const entry = {
        stop: () => {
          call.pause();
          return chain.then(finish);
        },
      };
      const finish = () => {
        forwards.delete(entry);
        resolve();
      };
      forwards.add(entry);
      call.on("data", (req: ForwardRequest) => {
        // Steps that arrive while draining are still answered (UNAVAILABLE),
        // so the coordinator sees one response per request it sent.
        chain = chain
          .then(async () => {
            if (call.cancelled) return;
            const res = await tracedStep(runner, req);
            if (!call.cancelled && !call.writableEnded) call.write(res);
          })
          .catch(() => undefined); // step() answers its own errors; a dead call just drops the reply
      });
      call.on("end", () => void chain.then(finish));
      call.on("cancelled", () => void chain.then(finish));
      call.on("error", () => void chain.then(finish));
    });
  }

  /**
   * runner.step under a "tessera.gpu.forward" span when the request carried
   * a (sampled) trace context; the step's micro-batches and layers are its
   * children, and its Attend and downstream Forward messages carry it on.
   */
  function tracedStep(
    runner: StepRunner,
    req: ForwardRequest,
  ): Promise<MessageInitShape<typeof ForwardResponseSchema>> {
    const parent = messageContext(req);
    // Untraced steps run under no context: nothing from another job's step leaks into them.
    if (!parent) return context.with(ROOT_CONTEXT, () => runner.step(req));
    const attributes = {
      "tessera.step_id": Number(req.stepId),
      "tessera.batch.size": req.sequences.length,
      "tessera.batch.tokens": req.sequences.reduce((t, q) => t + q.nTokens, 0),
      "tessera.positions.max": Math.max(0, ...req.sequences.map((q) => q.startPos + q.nTokens)),
      "tessera.layer_start": current?.model.layerStart ?? 0,
      "tessera.layer_end": current?.model.layerEnd ?? 0,
      "tessera.micro_batches": opts.microBatches,
      "tessera.next_stages": req.nextStages.length,
      "tessera.wire.bytes_received": req.hidden?.data.byteLength ?? req.tokens.length * 4,
    };
    return tracer.startActiveSpan("tessera.gpu.forward", { kind: SpanKind.SERVER, attributes }, parent, (span) =>
      endSpanWhen(span, runner.step(req), (res) => {
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
   * Runs the steps of one Forward stream, reusing its buffers from step to
   * step: one {@link Workspace} per micro-batch slot in flight, so
   * concurrent micro-batches never share a buffer.
   */
  class StepRunner {
    private readonly slots: Workspace[] = [];

    /**
     * Runs one step on this stage's layer range and, when the request names
     * `next_stages`, sends the hidden states on to the first of them (see
     * {@link passDown}). Never throws: a failure is the response's `error`.
     */
    async step(req: ForwardRequest): Promise<MessageInitShape<typeof ForwardResponseSchema>> {
      const t0 = performance.now();
      const timings = { denseSeconds: 0, attentionWaitSeconds: 0, attentionComputeSeconds: 0, totalSeconds: 0 };
      const loaded = current;
      const clock = new StepClock();
      let own: MessageInitShape<typeof ForwardResponseSchema>;
      try {
        if (service.state !== "running")
          throw new StepError(Code.UNAVAILABLE, `gpu-node ${address()} is ${service.state}`, "gpu", address());
        if (!loaded)
          throw new StepError(Code.FAILED_PRECONDITION, "no model is loaded: call Load first", "gpu", address());
        checkNextStages(req, loaded.model, address());
        loaded.acquire();
        try {
          own = { stepId: req.stepId, ...(await this.run(req, loaded.model, clock, timings)), timings };
        } finally {
          loaded.releaseLease();
        }
      } catch (err) {
        own = { stepId: req.stepId, error: toNodeError(err, address()), timings };
      } finally {
        timings.denseSeconds = clock.busySeconds;
        timings.attentionWaitSeconds = clock.idleSeconds;
        timings.totalSeconds = (performance.now() - t0) / 1000;
        recordStageTimings(timings);
      }
      if (own.error || req.nextStages.length === 0) return { ...own, stageTimings: [timings] };
      return this.passDown(req, own.hidden, timings, t0);
    }

    /**
     * Sends this stage's output `hidden` ([total_tokens, dim], in the dtype
     * run() produced it, passed on as the same message: no copy) to
     * next_stages[0] with next_stages[1:], over this node's stream to that
     * stage, and answers with its response: logits, or its error unchanged,
     * so role and address name the node that failed. Timings: dense and
     * attention figures summed over the stages, total_seconds this stage's
     * wall time from request to answer (later stages and hops included);
     * stage_timings this stage's own followed by the later stages'.
     * A stage that cannot be reached fails the step with role "gpu" and its
     * address (UNAVAILABLE, or DEADLINE_EXCEEDED after downstreamTimeoutMs).
     */
    private async passDown(
      req: ForwardRequest,
      hidden: MessageInitShape<typeof ForwardResponseSchema>["hidden"],
      timings: OwnTimings,
      t0: number,
    ): Promise<MessageInitShape<typeof ForwardResponseSchema>> {
      const [next, ...rest] = req.nextStages as [string, ...string[]];
      const elapsed = () => (performance.now() - t0) / 1000;
      let down: ForwardResponse;
      try {
        down = await downstream.forward(next, {
          stepId: req.stepId,
          sequences: req.sequences,
          ...(hidden ? { hidden } : {}),
          nextStages: rest,
        });
      } catch (err) {
        const error =
          err instanceof DownstreamError
            ? { code: err.code, message: err.message, role: "gpu", address: err.address }
            : toNodeError(err, address());
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
    ): Promise<Pick<MessageInitShape<typeof ForwardResponseSchema>, "logits" | "hidden">> {
      const { dim, vocabSize } = model.shape;
      const plan = planStep(req, model, address());
      const T = plan.totalTokens;
      const n = plan.sequences.length;
      const input = plan.hidden;
      const out = model.hasHead ? new Float32Array(n * vocabSize) : new Float32Array(T * dim);
      const batches = splitMicroBatches(plan.sequences, opts.microBatches);
      const errors: unknown[] = [];
      const state = { failed: false };
      let next = 0;
      const tracing = trace.getActiveSpan()?.isRecording() === true;
      const worker = async (ws: Workspace) => {
        while (!state.failed && next < batches.length) {
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
            const go = () => this.runMicroBatch(req, model, mb, input, out, ws, clock, timings, state);
            await (span ? context.with(trace.setSpan(context.active(), span), go) : go());
          } catch (err) {
            state.failed = true;
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
      if (state.failed) throw errors.find((e) => e !== undefined && !(e instanceof Stopped));
      // Logits stay f32 (sampling needs them exact); hidden states go in the wire dtype.
      return model.hasHead
        ? { logits: f32Tensor(out, [n, vocabSize]) }
        : { hidden: wireTensor(out, [T, dim], opts.wireDtype) };
    }

    /** The layer loop of one micro-batch: its rows of the input in, its rows of `out` written. */
    private async runMicroBatch(
      req: ForwardRequest,
      model: DenseModel,
      mb: MicroBatch,
      input: Float32Array | undefined,
      out: Float32Array,
      ws: Workspace,
      clock: StepClock,
      timings: { attentionComputeSeconds: number },
      state: { failed: boolean },
    ): Promise<void> {
      const { dim, nHeads, nKvHeads, headDim, vocabSize } = model.shape;
      const qDim = nHeads * headDim;
      const kvD = nKvHeads * headDim;
      const group = nHeads / nKvHeads;
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
      for (let layer = model.layerStart; layer < model.layerEnd; layer++) {
        if (state.failed) throw new Stopped();
        const layerSpan = tracing
          ? tracer.startSpan("tessera.gpu.layer", { attributes: { "tessera.layer": layer, "tessera.rows": T } })
          : undefined;
        // A layer that throws (a failed graph, a bad reply) still ends its span.
        const failLayer = (err: unknown): never => {
          failSpan(layerSpan, err);
          layerSpan?.end();
          throw err;
        };
        const qkv: Qkv = await model
          .pre(layer, x, positions, {
            q: ws.buf("q", T * qDim),
            k: ws.buf("k", T * kvD),
            v: ws.buf("v", T * kvD),
          })
          .catch(failLayer);
        // One AttendRequest per (node, KV-head group): its sequences' rows
        // and its heads' columns of q/k/v, encoded once straight into wire
        // bytes (f32 rows of a whole, contiguous call are views: no copy).
        const dtype = opts.wireDtype;
        const buildRequests = () =>
          mb.nodes.map((node, i) => {
            const heads = node.kvHeadEnd - node.kvHeadStart;
            const qBlock: StridedBlock = {
              width: qDim,
              rowRanges: node.rowRanges,
              col0: node.kvHeadStart * group * headDim,
              cols: heads * group * headDim,
            };
            const kvBlock: StridedBlock = {
              width: kvD,
              rowRanges: node.rowRanges,
              col0: node.kvHeadStart * headDim,
              cols: heads * headDim,
            };
            const pick = (a: Float32Array, block: StridedBlock, shape: number[], name: string) => {
              const whole = node.contiguous && block.cols === block.width;
              const row0 = node.rowRanges[0]![0];
              const rows = whole ? a.subarray(row0 * block.width, (row0 + node.rows) * block.width) : a;
              if (whole && dtype === "f32") return wireTensor(rows, shape, dtype);
              // Safe to reuse: this slot waits for the reply, so grpc-js has serialised the request by then.
              const bytes = ws.bytes(`${name}${i}`, node.rows * block.cols * (dtype === "f16" ? 2 : 4));
              return whole ? wireTensor(rows, shape, dtype, bytes) : stridedWireTensor(a, block, shape, dtype, bytes);
            };
            return {
              stepId: req.stepId,
              layer,
              items: node.items,
              q: pick(qkv.q, qBlock, [node.rows, heads * group, headDim], "q"),
              k: pick(qkv.k, kvBlock, [node.rows, heads, headDim], "k"),
              v: pick(qkv.v, kvBlock, [node.rows, heads, headDim], "v"),
            };
          });
        let requests: ReturnType<typeof buildRequests>;
        try {
          requests = buildRequests();
        } catch (err) {
          return failLayer(err);
        }

        clock.wait();
        let settled: PromiseSettledResult<AttendResponse>[];
        try {
          // Under the layer span: each AttendRequest carries it to its node.
          const attend = () =>
            Promise.allSettled(mb.nodes.map((node, i) => streams.attend(node.address, requests[i]!)));
          settled = await (layerSpan ? context.with(trace.setSpan(context.active(), layerSpan), attend) : attend());
        } finally {
          clock.resume();
        }
        if (layerSpan) {
          const bytes = (t: { data?: Uint8Array } | undefined) => t?.data?.byteLength ?? 0;
          layerSpan.setAttributes({
            "tessera.attention.nodes": mb.nodes.length,
            "tessera.wire.bytes_sent": requests.reduce((b, r) => b + bytes(r.q) + bytes(r.k) + bytes(r.v), 0),
            "tessera.wire.bytes_received": settled.reduce(
              (b, r) => b + (r.status === "fulfilled" ? bytes(r.value.o) : 0),
              0,
            ),
          });
          layerSpan.end();
        }
        // f16 replies decode into this slot's buffers; f32 ones are views.
        const responses = settled.map((r, i) => {
          const node = mb.nodes[i]!;
          const cols = (node.kvHeadEnd - node.kvHeadStart) * group * headDim;
          return checkAttendResponse(r, node, layer, cols, ws.buf(`o${i}`, node.rows * cols));
        });
        timings.attentionComputeSeconds += Math.max(0, ...responses.map((r) => r.response.computeSeconds));

        let o: Float32Array;
        const only = mb.nodes[0]!;
        if (mb.nodes.length === 1 && only.contiguous && only.kvHeadStart === 0 && only.kvHeadEnd === nKvHeads) {
          o = responses[0]!.o;
        } else {
          o = ws.buf("o", T * qDim);
          responses.forEach((r, i) => {
            const node = mb.nodes[i]!;
            const cols = (node.kvHeadEnd - node.kvHeadStart) * group * headDim;
            scatterBlock(
              r.o,
              { width: qDim, rowRanges: node.rowRanges, col0: node.kvHeadStart * group * headDim, cols },
              o,
            );
          });
        }
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
      const n = mb.sequences.length;
      let lastRows = x;
      if (n !== T) {
        lastRows = ws.buf("last", n * dim);
        mb.sequences.forEach((s, i) =>
          lastRows.set(x.subarray((s.row0 + s.nTokens - 1) * dim, (s.row0 + s.nTokens) * dim), i * dim),
        );
      }
      await model.head(lastRows, out.subarray(mb.seq0 * vocabSize, (mb.seq0 + n) * vocabSize));
    }
  }

  /**
   * The advertised profile: measured in start() ("measure"), none ("off"),
   * or the given one with profile_seconds 0 (not measured here) and this
   * node's price.
   */
  let profile: NodeProfile | undefined =
    typeof opts.profile === "object"
      ? { ...opts.profile, pricePerHour: opts.pricePerHour, profileSeconds: 0 }
      : undefined;

  /** GpuNode.Info: price ($/h), profile (unset when off), execution provider and the loaded layer range. */
  async function info() {
    const key = current ? (JSON.parse(current.key) as [string, number, number]) : undefined;
    return {
      pricePerHour: opts.pricePerHour,
      profile,
      executionProvider: opts.executionProvider,
      modelPath: key?.[0] ?? "",
      layerStart: key?.[1] ?? 0,
      layerEnd: key?.[2] ?? 0,
    };
  }

  const service = createGrpcService({
    role: "gpu",
    name: "gpu-node",
    host: opts.host,
    port: opts.port,
    serviceNames: [GPU_NODE_SERVICE],
    register: (server) => addService(server, GpuNodeService, { load, forward, info }),
    graceMs: opts.shutdownGraceMs,
    // Measured before the port is bound, so no step competes with it.
    async onStart() {
      if (opts.profile === "measure") profile = await profileGpuNode(opts);
    },
    async onDrain() {
      // Let running steps end (within the grace period) before the server stops taking calls.
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...forwards].map((f) => f.stop())),
        new Promise<void>((resolve) => (grace = setTimeout(resolve, opts.shutdownGraceMs))),
      ]);
      clearTimeout(grace);
      // No step goes on to a later stage from now on: half-close those
      // streams, so the next stages end them with OK.
      downstream.close();
    },
    async beforeShutdown() {
      // Pending attention and downstream-stage calls fail, so running steps
      // end now and their Forward streams end with OK; the streams to later
      // stages are half-closed, so those end theirs with OK too.
      streams.close();
      downstream.close();
      await Promise.all([...forwards].map((f) => f.stop()));
    },
    async onClose() {
      await loadChain;
      const m = current;
      current = undefined;
      if (m) {
        m.releaseLease();
        retire(m);
      }
      await Promise.all([...retiring]);
    },
  });
  return Object.assign(service, { options: opts });
}

/** The StepTimings of this stage alone, as step() fills them (seconds). */
interface OwnTimings {
  denseSeconds: number;
  attentionWaitSeconds: number;
  attentionComputeSeconds: number;
  totalSeconds: number;
}

/**
 * Validates ForwardRequest.next_stages against this stage: none after the
 * stage that applies the head, and no empty address.
 * @throws StepError INVALID_ARGUMENT naming the field.
 */
function checkNextStages(req: ForwardRequest, model: DenseModel, self: string): void {
  if (req.nextStages.length === 0) return;
  const bad = (msg: string) => new StepError(Code.INVALID_ARGUMENT, `step ${req.stepId}: ${msg}`, "gpu", self);
  if (model.hasHead)
    throw bad(`next_stages [${req.nextStages.join(", ")}] given to the stage that applies the head (the last stage)`);
  const i = req.nextStages.findIndex((a) => !isAddress(a));
  if (i >= 0) throw bad(`next_stages[${i}] ${JSON.stringify(req.nextStages[i])} is not host:port`);
}

/**
 * Whether an address from a request can be dialled: not empty, printable
 * ASCII without spaces (host:port, [v6]:port; grpc-js parses the rest). A
 * control character must never reach the resolver: "127\0.0.0.1:1" is
 * read as host "127" (0.0.0.127), and the socket grpc-js then leaves
 * behind crashed the node with an uncaught ECONNRESET (found by
 * test/fuzz.test.ts).
 */
function isAddress(address: string): boolean {
  return /^[\x21-\x7e]+$/.test(address);
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

/** A micro-batch stopped before its next layer because another one failed. */
class Stopped extends Error {}

/**
 * Where a step's wall time went, with micro-batches overlapping: busy while
 * some running micro-batch is not waiting for attention (embedding, dense
 * graphs, gather/scatter, head), idle while every running one is. With one
 * micro-batch, idle is the plain attention wait; with several, it is what
 * pipelining did not hide.
 */
class StepClock {
  busySeconds = 0;
  idleSeconds = 0;
  private active = 0;
  private waiting = 0;
  private since = performance.now();

  /** A micro-batch starts running. */
  start(): void {
    this.change(() => this.active++);
  }

  /** A micro-batch ends (it is not waiting). */
  end(): void {
    this.change(() => this.active--);
  }

  /** A running micro-batch starts waiting for attention. */
  wait(): void {
    this.change(() => this.waiting++);
  }

  /** A waiting micro-batch has its attention replies. */
  resume(): void {
    this.change(() => this.waiting--);
  }

  private state(): "none" | "busy" | "idle" {
    if (this.active === 0) return "none";
    return this.waiting === this.active ? "idle" : "busy";
  }

  private change(f: () => void): void {
    const before = this.state();
    f();
    if (this.state() === before) return;
    const now = performance.now();
    if (before === "busy") this.busySeconds += (now - this.since) / 1000;
    else if (before === "idle") this.idleSeconds += (now - this.since) / 1000;
    this.since = now;
  }
}

/** Reusable typed arrays of one Forward stream, grown on demand. */
class Workspace {
  private readonly f32 = new Map<string, Float32Array>();
  private readonly u8 = new Map<string, Uint8Array>();
  private pos = new BigInt64Array(0);

  /** A [n] f32 view of the buffer `name`, grown (not preserving contents) when short. */
  buf(name: string, n: number): Float32Array {
    let b = this.f32.get(name);
    if (!b || b.length < n) {
      b = new Float32Array(Math.max(n, b ? 2 * b.length : 0));
      this.f32.set(name, b);
    }
    return b.length === n ? b : b.subarray(0, n);
  }

  /** A [n] byte view of the (8-byte aligned) byte buffer `name`, grown (not preserving contents) when short. */
  bytes(name: string, n: number): Uint8Array {
    let b = this.u8.get(name);
    if (!b || b.length < n) {
      b = new Uint8Array(Math.max(n, b ? 2 * b.length : 0));
      this.u8.set(name, b);
    }
    return b.length === n ? b : b.subarray(0, n);
  }

  /** Whether `a` is (a view of) the buffer `name`. */
  owns(a: Float32Array, name: string): boolean {
    return this.f32.get(name)?.buffer === a.buffer;
  }

  positions(n: number): BigInt64Array {
    if (this.pos.length < n) this.pos = new BigInt64Array(Math.max(n, 2 * this.pos.length));
    return this.pos.length === n ? this.pos : this.pos.subarray(0, n);
  }
}

/** A KV-head group [kvHeadStart, kvHeadEnd) of a sequence, held by the attention node at `address` as `seqId`. */
interface PlannedShard {
  address: string;
  seqId: string;
  kvHeadStart: number;
  kvHeadEnd: number;
}

/** One sequence of a step and its rows in the batch (or micro-batch). */
interface PlannedSequence {
  seqId: string;
  startPos: number;
  nTokens: number;
  row0: number;
  /** Where its KV heads are: one shard of all heads when unsplit; none on a stage without layers. */
  shards: PlannedShard[];
}

/**
 * One Attend call of a micro-batch per layer: the sequences (or their
 * shards) that one attention node holds for one KV-head range.
 */
interface PlannedNode {
  address: string;
  /** KV heads [kvHeadStart, kvHeadEnd) of the model this call carries. */
  kvHeadStart: number;
  kvHeadEnd: number;
  items: { seqId: string; startPos: number; nTokens: number }[];
  /** [row0, nRows] of each sequence in micro-batch order; merged when adjacent. */
  rowRanges: [number, number][];
  rows: number;
  /** All rows form one range, so q/k/v/o rows are views, not copies. */
  contiguous: boolean;
}

interface StepPlan {
  totalTokens: number;
  sequences: PlannedSequence[];
  /** [total_tokens, dim] f32 input hidden states (decoded when they came as f16); undefined when this node embeds. */
  hidden: Float32Array | undefined;
}

/** Consecutive sequences of a step, run through the layers together. */
interface MicroBatch {
  /** Index of its first sequence in the step (its first logits row). */
  seq0: number;
  /** Its first row in the step's batch. */
  row0: number;
  rows: number;
  /** Its sequences, rows counted from `row0`. */
  sequences: PlannedSequence[];
  /** Its sequences' shards grouped by attention node and KV-head range (in order of first appearance). */
  nodes: PlannedNode[];
}

/**
 * Splits a step's sequences, in order and never inside one, into at most
 * `k` micro-batches of about equal tokens: micro-batch g ends at the
 * sequence boundary nearest g+1 k-ths of the tokens, and each gets at least
 * one sequence.
 */
function splitMicroBatches(sequences: readonly PlannedSequence[], k: number): MicroBatch[] {
  const n = sequences.length;
  const groups = Math.min(k, n);
  const total = sequences.reduce((a, s) => a + s.nTokens, 0);
  const batches: MicroBatch[] = [];
  let i = 0;
  let cum = 0;
  for (let g = 0; g < groups; g++) {
    const first = i;
    const target = (total * (g + 1)) / groups;
    cum += sequences[i++]!.nTokens;
    while (n - i > groups - g - 1 && cum + sequences[i]!.nTokens / 2 <= target) cum += sequences[i++]!.nTokens;
    batches.push(planMicroBatch(sequences.slice(first, i), first));
  }
  return batches;
}

/** A micro-batch of `sequences` (consecutive in the step, the first at index `seq0`). */
function planMicroBatch(sequences: readonly PlannedSequence[], seq0: number): MicroBatch {
  const row0 = sequences[0]!.row0;
  const nodes = new Map<string, PlannedNode>();
  const local: PlannedSequence[] = [];
  let row = 0;
  for (const s of sequences) {
    local.push({ ...s, row0: row });
    for (const shard of s.shards) {
      const key = `${shard.address} ${shard.kvHeadStart}-${shard.kvHeadEnd}`;
      let node = nodes.get(key);
      if (!node) {
        node = {
          address: shard.address,
          kvHeadStart: shard.kvHeadStart,
          kvHeadEnd: shard.kvHeadEnd,
          items: [],
          rowRanges: [],
          rows: 0,
          contiguous: true,
        };
        nodes.set(key, node);
      }
      node.items.push({ seqId: shard.seqId, startPos: s.startPos, nTokens: s.nTokens });
      const lastRange = node.rowRanges[node.rowRanges.length - 1];
      if (lastRange && lastRange[0] + lastRange[1] === row) lastRange[1] += s.nTokens;
      else node.rowRanges.push([row, s.nTokens]);
      node.rows += s.nTokens;
    }
    row += s.nTokens;
  }
  for (const node of nodes.values()) node.contiguous = node.rowRanges.length === 1;
  return { seq0, row0, rows: row, sequences: local, nodes: [...nodes.values()] };
}

/**
 * Validates a ForwardRequest against the model and places its sequences'
 * rows in the batch.
 * @throws StepError INVALID_ARGUMENT naming the bad field.
 */
function planStep(req: ForwardRequest, model: DenseModel, self: string): StepPlan {
  const bad = (msg: string) => new StepError(Code.INVALID_ARGUMENT, `step ${req.stepId}: ${msg}`, "gpu", self);
  const { seqLen, dim, nKvHeads } = model.shape;
  if (req.sequences.length === 0) throw bad("no sequences");
  const sequences: PlannedSequence[] = [];
  const seen = new Set<string>();
  const seenShards = new Set<string>();
  let row = 0;
  const hasLayers = model.layerEnd > model.layerStart;
  for (const s of req.sequences) {
    if (seen.has(s.seqId)) throw bad(`sequence ${JSON.stringify(s.seqId)} appears twice`);
    seen.add(s.seqId);
    if (s.nTokens < 1) throw bad(`sequence ${JSON.stringify(s.seqId)} has n_tokens 0`);
    if (s.startPos + s.nTokens > seqLen) {
      throw bad(
        `sequence ${JSON.stringify(s.seqId)}: positions [${s.startPos}, ${s.startPos + s.nTokens}) exceed the model's seq_len ${seqLen}`,
      );
    }
    const shards = hasLayers ? planShards(s, nKvHeads, bad) : [];
    for (const sh of shards) {
      const key = `${sh.address} ${sh.seqId}`;
      if (seenShards.has(key))
        throw bad(`attention node ${sh.address} is sent sequence ${JSON.stringify(sh.seqId)} twice`);
      seenShards.add(key);
    }
    sequences.push({ seqId: s.seqId, startPos: s.startPos, nTokens: s.nTokens, row0: row, shards });
    row += s.nTokens;
  }
  let hidden: Float32Array | undefined;
  if (model.embeds) {
    if (req.tokens.length !== row) throw bad(`${req.tokens.length} tokens for ${row} new positions`);
    const vocab = model.shape.vocabSize;
    req.tokens.forEach((t, i) => {
      if (!(t >= 0 && t < vocab)) throw bad(`token ${t} at index ${i} is outside the vocabulary [0, ${vocab})`);
    });
  } else {
    const h = req.hidden;
    if (!h) throw bad("hidden is missing (this node does not embed tokens)");
    if (h.shape.length !== 2 || h.shape[0] !== row || h.shape[1] !== dim) {
      throw bad(`hidden has shape [${h.shape.join(", ")}], expected [${row}, ${dim}]`);
    }
    try {
      hidden = tensorF32(h, "hidden");
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  return { totalTokens: row, sequences, hidden };
}

/**
 * The shards of one SequenceStep: `attention_address` alone is one shard of
 * all KV heads under the sequence's own id; `shards` must be in order,
 * non-empty, and cover [0, n_kv_heads) without gaps, each with an address
 * and a seq_id.
 * @throws what `bad` makes (INVALID_ARGUMENT) naming the sequence and field.
 */
function planShards(
  s: ForwardRequest["sequences"][number],
  nKvHeads: number,
  bad: (msg: string) => StepError,
): PlannedShard[] {
  const name = `sequence ${JSON.stringify(s.seqId)}`;
  if (s.shards.length === 0) {
    if (s.attentionAddress === "") throw bad(`${name} has no attention_address and no shards`);
    if (!isAddress(s.attentionAddress))
      throw bad(`${name}: attention_address ${JSON.stringify(s.attentionAddress)} is not host:port`);
    return [{ address: s.attentionAddress, seqId: s.seqId, kvHeadStart: 0, kvHeadEnd: nKvHeads }];
  }
  if (s.attentionAddress !== "") throw bad(`${name} has both attention_address and shards`);
  let next = 0;
  return s.shards.map((sh, i) => {
    const field = `${name}: shards[${i}]`;
    if (sh.address === "") throw bad(`${field}.address is empty`);
    if (!isAddress(sh.address)) throw bad(`${field}.address ${JSON.stringify(sh.address)} is not host:port`);
    if (sh.seqId === "") throw bad(`${field}.seq_id is empty`);
    if (sh.kvHeadStart !== next || sh.kvHeadEnd <= sh.kvHeadStart || sh.kvHeadEnd > nKvHeads) {
      throw bad(
        `${field} has KV heads [${sh.kvHeadStart}, ${sh.kvHeadEnd}); shards must cover [0, ${nKvHeads}) in order, from ${next}`,
      );
    }
    next = sh.kvHeadEnd;
    if (i === s.shards.length - 1 && next !== nKvHeads)
      throw bad(`${name}: shards cover KV heads [0, ${next}) of ${nKvHeads}`);
    return { address: sh.address, seqId: sh.seqId, kvHeadStart: sh.kvHeadStart, kvHeadEnd: sh.kvHeadEnd };
  });
}

/**
 * The o rows of a settled Attend call as f32 ([node.rows, qDim]: a view of
 * an f32 reply, or an f16 reply decoded into `scratch`), or a StepError
 * naming the node.
 */
function checkAttendResponse(
  r: PromiseSettledResult<AttendResponse>,
  node: PlannedNode,
  layer: number,
  qDim: number,
  scratch: Float32Array,
): { response: AttendResponse; o: Float32Array } {
  const fail = (code: number, msg: string) => new StepError(code, msg, "attention", node.address);
  if (r.status === "rejected") {
    const e = r.reason as unknown;
    if (e instanceof AttentionNodeError) throw fail(e.code, `layer ${layer}: ${e.message}`);
    throw fail(Code.INTERNAL, `attention node ${node.address}: layer ${layer}: ${(e as Error).message}`);
  }
  const res = r.value;
  if (res.error) {
    throw fail(res.error.code || Code.INTERNAL, `attention node ${node.address}: layer ${layer}: ${res.error.message}`);
  }
  let o: Float32Array;
  try {
    o = tensorF32(res.o, "o", scratch);
  } catch (err) {
    throw fail(Code.INTERNAL, `attention node ${node.address}: layer ${layer}: ${(err as Error).message}`);
  }
  if (o.length !== node.rows * qDim || res.o!.shape[0] !== node.rows) {
    throw fail(
      Code.INTERNAL,
      `attention node ${node.address}: layer ${layer}: o has shape [${res.o!.shape.join(", ")}], expected [${node.rows}, ${qDim}]`,
    );
  }
  return { response: res, o };
}

/**
 * The inverse of picking `block` out of a matrix: the rows of `src` ([rows
 * of the block, block.cols], one after another) go to the block's rows and
 * columns of `dst` (width block.width).
 */
function scatterBlock(src: Float32Array, block: StridedBlock, dst: Float32Array): void {
  const { width, rowRanges, col0, cols } = block;
  let at = 0;
  for (const [r0, n] of rowRanges) {
    if (cols === width) {
      dst.set(src.subarray(at, at + n * width), r0 * width);
      at += n * width;
      continue;
    }
    for (let r = r0; r < r0 + n; r++, at += cols) dst.set(src.subarray(at, at + cols), r * width + col0);
  }
}

/** A step's failure as a NodeError; anything unexpected is this node's INTERNAL error. */
function toNodeError(err: unknown, self: string): { code: number; message: string; role: string; address: string } {
  if (err instanceof StepError) return { code: err.code, message: err.message, role: err.role, address: err.address };
  const e = RpcError.from(err);
  return { code: e.code, message: e.message, role: "gpu", address: self };
}
