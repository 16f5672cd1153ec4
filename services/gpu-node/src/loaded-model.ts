/**
 * The model a gpu-node holds (GpuNode.Load): the checkpoint's layer range
 * in onnxruntime sessions ({@link DenseModel}), leased by the steps that use
 * it so a re-Load frees the old sessions only when those steps end, and the
 * slot that serialises Loads, refuses one that another coordinator's live
 * lease forbids (model-lease.ts), stops one its caller abandoned, and swaps
 * the current model.
 */
import { performance } from "node:perf_hooks";
import { CheckpointError } from "@tessera/core";
import { openModel, type ModelSource } from "@tessera/model";
import { Code, RpcError, type LoadRequest, type LoadResponseSchema, type MessageInitShape } from "@tessera/proto";
import { DenseModel } from "./dense-model.js";
import { NodeLease, modelIdOf } from "./model-lease.js";
import type { CompiledGpuNodeOptions } from "./options.js";

/** A LoadResponse as Load answers it. */
export type LoadAnswer = MessageInitShape<typeof LoadResponseSchema>;

/** A loaded model with the steps using it, so a re-Load frees it only when they end. */
export class LoadedModel {
  private active = 0;
  private retired = false;
  private freed: Promise<void> | undefined;
  private onFreed: (() => void) | undefined;

  /**
   * @param modelId what was loaded (LoadResponse.model_id: see modelIdOf)
   * @param modelPath the checkpoint's path as the Load gave it
   * @param model its sessions
   * @param response the LoadResponse that loaded it (answered again to an identical Load)
   */
  constructor(
    readonly modelId: string,
    readonly modelPath: string,
    readonly model: DenseModel,
    readonly response: LoadAnswer,
  ) {}

  /** First layer held. */
  get layerStart(): number {
    return this.model.layerStart;
  }

  /** End of the layer range held (exclusive). */
  get layerEnd(): number {
    return this.model.layerEnd;
  }

  /** A step (or the slot) starts using the model. */
  acquire(): void {
    this.active++;
  }

  /** A user of the model is done; the last one frees a retired model. */
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
 * Opens the checkpoint of a LoadRequest and builds its layer range's
 * sessions with the node's execution provider, weight dtype and threads;
 * `modelId` is answered as LoadResponse.model_id.
 * @throws RpcError NOT_FOUND (no such file), INVALID_ARGUMENT (not a
 *   checkpoint, a layer range outside it, an empty load), CANCELLED when
 *   `signal` aborts (the sessions built are released), or what
 *   DenseModel.create throws as an RpcError (FAILED_PRECONDITION for a
 *   missing execution provider).
 */
export async function loadDenseModel(
  req: LoadRequest,
  opts: CompiledGpuNodeOptions,
  modelId: string,
  signal?: AbortSignal,
): Promise<{ model: DenseModel; response: LoadAnswer }> {
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
    throw new RpcError(Code.INVALID_ARGUMENT, "empty load: no layers (layer_start == layer_end), no embed and no head");
  }
  const model = await DenseModel.create(checkpoint, {
    layerStart: req.layerStart,
    layerEnd: req.layerEnd,
    embed: req.embed,
    head: req.head,
    executionProvider: opts.executionProvider,
    weightDtype: opts.weightDtype,
    ...(signal ? { signal } : {}),
    ...(opts.intraOpThreads !== undefined ? { intraOpThreads: opts.intraOpThreads } : {}),
  }).catch((err: unknown) => {
    throw RpcError.from(err);
  });
  const s = checkpoint.shape;
  const response: LoadAnswer = {
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
    modelId,
  };
  return { model, response };
}

/**
 * The model slot of a gpu-node: Loads run one at a time (an identical Load
 * answers the current model's response again), a new model replaces the
 * current one and retires it (freed once its steps end), and the slot's
 * {@link NodeLease} decides who may load another model.
 */
export class ModelSlot {
  private loaded: LoadedModel | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly retiring = new Set<Promise<void>>();
  /** Who may load another model (steps count as its uses). */
  readonly lease: NodeLease;

  /**
   * @param opts the node's options (execution provider, weight dtype, threads, lease TTL, log)
   * @param checkRunning throws (RpcError UNAVAILABLE) unless the node is running
   * @param self this node's address (host:port), for messages
   */
  constructor(
    private readonly opts: CompiledGpuNodeOptions,
    private readonly checkRunning: () => void,
    private readonly self: () => string,
  ) {
    this.lease = new NodeLease(opts.leaseTtlMs, self);
  }

  /** The model steps run on now, if any. */
  get current(): LoadedModel | undefined {
    return this.loaded;
  }

  /**
   * GpuNode.Load: loads the request's layer range (after any Load in
   * progress) for `req.holder` and makes it current. When `signal` aborts
   * (the caller cancelled, or its deadline passed) the Load stops before
   * its next session, frees what it built and logs it.
   * @throws RpcError as {@link loadDenseModel}; FAILED_PRECONDITION, reason
   *   LEASED, when another holder's lease is live (NodeLease.claim);
   *   UNAVAILABLE when the node is not (or no longer) running.
   */
  async load(req: LoadRequest, signal?: AbortSignal): Promise<LoadAnswer> {
    this.checkRunning();
    const modelId = await modelIdOf(req);
    const undo = this.lease.claim(req.holder, modelId, `[${req.layerStart}, ${req.layerEnd})`);
    const run = this.chain.then(async () => {
      if (signal?.aborted) throw new RpcError(Code.CANCELLED, "load cancelled by its caller before it started");
      if (modelId !== undefined && this.loaded?.modelId === modelId) return this.loaded.response;
      const { model, response } = await loadDenseModel(req, this.opts, modelId ?? "", signal);
      try {
        this.checkRunning();
      } catch (err) {
        await model.release();
        throw err;
      }
      const loaded = new LoadedModel(modelId ?? "", req.modelPath, model, response);
      loaded.acquire(); // held by the slot until replaced or closed
      const old = this.loaded;
      this.loaded = loaded;
      if (old) {
        old.releaseLease();
        this.retire(old);
      }
      return response;
    });
    this.chain = run.catch(() => undefined);
    try {
      const response = await run;
      this.lease.end();
      return response;
    } catch (err) {
      this.lease.end();
      undo();
      if (RpcError.from(err).code === Code.CANCELLED)
        this.opts.log(`gpu-node ${this.self()}: Load of ${req.modelPath} stopped: ${(err as Error).message}`);
      throw err;
    }
  }
  /** Waits for a Load in progress, then retires the current model; resolves when every model is freed. */
  async close(): Promise<void> {
    await this.chain;
    const m = this.loaded;
    this.loaded = undefined;
    if (m) {
      m.releaseLease();
      this.retire(m);
    }
    await Promise.all([...this.retiring]);
  }

  private retire(m: LoadedModel): void {
    const p = m.retire();
    this.retiring.add(p);
    void p.then(() => this.retiring.delete(p));
  }
}
