/**
 * The gpu-node service (tessera.v1.GpuNode): loads a layer range of a
 * llama2.c checkpoint into onnxruntime sessions and runs batched Forward
 * steps, calling the attention node of each sequence directly over
 * long-lived Attend streams (ARCHITECTURE.md, "One decode step").
 */
import { performance } from "node:perf_hooks";
import {
  CheckpointError,
  type Checkpoint,
  ConfigError,
  createGrpcService,
  f32Tensor,
  loadModel,
  tensorF32,
  type Service,
} from "@tessera/core";
import {
  Code,
  GpuNode as GpuNodeService,
  RpcError,
  addService,
  type AttendResponse,
  type ForwardRequest,
  type ForwardResponseSchema,
  type LoadRequest,
  type LoadResponseSchema,
  type MessageInitShape,
  type ServerDuplexStream,
} from "@tessera/proto";
import { AttendStreams, AttentionNodeError } from "./attend-streams.js";
import { DenseModel, type ExecutionProvider, type Qkv } from "./dense-model.js";

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
  return Object.freeze({
    host,
    port,
    executionProvider,
    intraOpThreads,
    attentionTimeoutMs: positiveMs("attentionTimeoutMs", options.attentionTimeoutMs ?? 120_000),
    shutdownGraceMs: positiveMs("shutdownGraceMs", options.shutdownGraceMs ?? 5_000),
    microBatches: positiveInt("microBatches", options.microBatches ?? 1),
    maxInFlight: positiveInt("maxInFlight", options.maxInFlight ?? 2),
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
      let checkpoint: Checkpoint;
      try {
        checkpoint = await loadModel(req.modelPath);
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
            const res = await runner.step(req);
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
   * Runs the steps of one Forward stream, reusing its buffers from step to
   * step: one {@link Workspace} per micro-batch slot in flight, so
   * concurrent micro-batches never share a buffer.
   */
  class StepRunner {
    private readonly slots: Workspace[] = [];

    async step(req: ForwardRequest): Promise<MessageInitShape<typeof ForwardResponseSchema>> {
      const t0 = performance.now();
      const timings = { denseSeconds: 0, attentionWaitSeconds: 0, attentionComputeSeconds: 0, totalSeconds: 0 };
      const loaded = current;
      const clock = new StepClock();
      try {
        if (service.state !== "running")
          throw new StepError(Code.UNAVAILABLE, `gpu-node ${address()} is ${service.state}`, "gpu", address());
        if (!loaded)
          throw new StepError(Code.FAILED_PRECONDITION, "no model is loaded: call Load first", "gpu", address());
        loaded.acquire();
        try {
          return { stepId: req.stepId, ...(await this.run(req, loaded.model, clock, timings)), timings };
        } finally {
          loaded.releaseLease();
        }
      } catch (err) {
        return { stepId: req.stepId, error: toNodeError(err, address()), timings };
      } finally {
        timings.denseSeconds = clock.busySeconds;
        timings.attentionWaitSeconds = clock.idleSeconds;
        timings.totalSeconds = (performance.now() - t0) / 1000;
      }
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
      const input = model.embeds ? undefined : tensorF32(req.hidden, "hidden");
      const out = model.hasHead ? new Float32Array(n * vocabSize) : new Float32Array(T * dim);
      const batches = splitMicroBatches(plan.sequences, opts.microBatches);
      const errors: unknown[] = [];
      const state = { failed: false };
      let next = 0;
      const worker = async (ws: Workspace) => {
        while (!state.failed && next < batches.length) {
          const i = next++;
          clock.start();
          try {
            await this.runMicroBatch(req, model, batches[i]!, input, out, ws, clock, timings, state);
          } catch (err) {
            state.failed = true;
            errors[i] = err;
          } finally {
            clock.end();
          }
        }
      };
      const slots = Math.min(opts.maxInFlight, batches.length);
      for (let i = this.slots.length; i < slots; i++) this.slots.push(new Workspace());
      await Promise.all(this.slots.slice(0, slots).map(worker));
      if (state.failed) throw errors.find((e) => e !== undefined && !(e instanceof Stopped));
      return model.hasHead ? { logits: f32Tensor(out, [n, vocabSize]) } : { hidden: f32Tensor(out, [T, dim]) };
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

      for (let layer = model.layerStart; layer < model.layerEnd; layer++) {
        if (state.failed) throw new Stopped();
        const qkv: Qkv = await model.pre(layer, x, positions, {
          q: ws.buf("q", T * qDim),
          k: ws.buf("k", T * kvD),
          v: ws.buf("v", T * kvD),
        });
        const requests = mb.nodes.map((node, i) => {
          // A node whose sequences sit side by side in the batch gets views;
          // otherwise its rows are gathered into this node's own buffers.
          const pick = (a: Float32Array, width: number, name: string) => {
            if (!node.contiguous) return gather(a, width, node.rowRanges, ws.buf(`${name}${i}`, node.rows * width));
            const row0 = node.rowRanges[0]![0];
            return a.subarray(row0 * width, (row0 + node.rows) * width);
          };
          return {
            stepId: req.stepId,
            layer,
            items: node.items,
            q: f32Tensor(pick(qkv.q, qDim, "q"), [node.rows, nHeads, headDim]),
            k: f32Tensor(pick(qkv.k, kvD, "k"), [node.rows, nKvHeads, headDim]),
            v: f32Tensor(pick(qkv.v, kvD, "v"), [node.rows, nKvHeads, headDim]),
          };
        });

        clock.wait();
        let settled: PromiseSettledResult<AttendResponse>[];
        try {
          settled = await Promise.allSettled(mb.nodes.map((node, i) => streams.attend(node.address, requests[i]!)));
        } finally {
          clock.resume();
        }
        const responses = settled.map((r, i) => checkAttendResponse(r, mb.nodes[i]!, layer, qDim));
        timings.attentionComputeSeconds += Math.max(0, ...responses.map((r) => r.response.computeSeconds));

        let o: Float32Array;
        if (mb.nodes.length === 1 && mb.nodes[0]!.contiguous) {
          o = responses[0]!.o;
        } else {
          o = ws.buf("o", T * qDim);
          responses.forEach((r, i) => scatter(r.o, qDim, mb.nodes[i]!.rowRanges, o));
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

  const service = createGrpcService({
    role: "gpu",
    name: "gpu-node",
    host: opts.host,
    port: opts.port,
    serviceNames: [GPU_NODE_SERVICE],
    register: (server) => addService(server, GpuNodeService, { load, forward }),
    graceMs: opts.shutdownGraceMs,
    async onDrain() {
      // Let running steps end (within the grace period) before the server stops taking calls.
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...forwards].map((f) => f.stop())),
        new Promise<void>((resolve) => (grace = setTimeout(resolve, opts.shutdownGraceMs))),
      ]);
      clearTimeout(grace);
    },
    async beforeShutdown() {
      // Pending attention calls fail, so running steps end now and their Forward streams end with OK.
      streams.close();
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

  /** Whether `a` is (a view of) the buffer `name`. */
  owns(a: Float32Array, name: string): boolean {
    return this.f32.get(name)?.buffer === a.buffer;
  }

  positions(n: number): BigInt64Array {
    if (this.pos.length < n) this.pos = new BigInt64Array(Math.max(n, 2 * this.pos.length));
    return this.pos.length === n ? this.pos : this.pos.subarray(0, n);
  }
}

/** One sequence of a step and its rows in the batch (or micro-batch). */
interface PlannedSequence {
  seqId: string;
  startPos: number;
  nTokens: number;
  row0: number;
  attentionAddress: string;
}

/** The sequences of a micro-batch one attention node holds. */
interface PlannedNode {
  address: string;
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
  /** Its sequences grouped by attention node (in order of first appearance). */
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
    if (s.attentionAddress !== "") {
      let node = nodes.get(s.attentionAddress);
      if (!node) {
        node = { address: s.attentionAddress, items: [], rowRanges: [], rows: 0, contiguous: true };
        nodes.set(s.attentionAddress, node);
      }
      node.items.push({ seqId: s.seqId, startPos: s.startPos, nTokens: s.nTokens });
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
  const { seqLen, dim } = model.shape;
  if (req.sequences.length === 0) throw bad("no sequences");
  const sequences: PlannedSequence[] = [];
  const seen = new Set<string>();
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
    if (hasLayers && s.attentionAddress === "")
      throw bad(`sequence ${JSON.stringify(s.seqId)} has no attention_address`);
    sequences.push({
      seqId: s.seqId,
      startPos: s.startPos,
      nTokens: s.nTokens,
      row0: row,
      attentionAddress: hasLayers ? s.attentionAddress : "",
    });
    row += s.nTokens;
  }
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
      tensorF32(h, "hidden");
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  return { totalTokens: row, sequences };
}

/** The o rows of a settled Attend call, or a StepError naming the node. */
function checkAttendResponse(
  r: PromiseSettledResult<AttendResponse>,
  node: PlannedNode,
  layer: number,
  qDim: number,
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
    o = tensorF32(res.o, "o");
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

/** Copies the rows `ranges` ([row0, n]) of `src` (width `w`) into `dst`, one after another. */
function gather(src: Float32Array, w: number, ranges: readonly [number, number][], dst: Float32Array): Float32Array {
  let at = 0;
  for (const [r0, n] of ranges) {
    dst.set(src.subarray(r0 * w, (r0 + n) * w), at);
    at += n * w;
  }
  return dst;
}

/** The inverse of {@link gather}: rows of `src` go to `ranges` of `dst`. */
function scatter(src: Float32Array, w: number, ranges: readonly [number, number][], dst: Float32Array): void {
  let at = 0;
  for (const [r0, n] of ranges) {
    dst.set(src.subarray(at, at + n * w), r0 * w);
    at += n * w;
  }
}

/** A step's failure as a NodeError; anything unexpected is this node's INTERNAL error. */
function toNodeError(err: unknown, self: string): { code: number; message: string; role: string; address: string } {
  if (err instanceof StepError) return { code: err.code, message: err.message, role: err.role, address: err.address };
  const e = RpcError.from(err);
  return { code: e.code, message: e.message, role: "gpu", address: self };
}
