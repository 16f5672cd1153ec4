/**
 * Generate, as the gRPC method and the in-process job worker both run it:
 * checks the request against the caller (tenancy, priority, limits), loads
 * the model's layers on the gpu-nodes as pipeline stages (layers split by
 * the planner in proportion to the nodes' measured speed), and runs the
 * batch with the engine ({@link runBatch}).
 */
import { setMaxListeners } from "node:events";
import { wireKvPlacement } from "@tessera/core";
import {
  Attention,
  Code,
  KvPlacement,
  GpuNode,
  NodeErrorReason,
  RpcError,
  type Client,
  type GenerateEventSchema,
  type GenerateRequest,
  type LoadResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { redactNatsServers, tenantJobKey } from "@tessera/nats";
import { runBatch, type GenAiOperation, type LoadedModel, type TokenListener } from "../engine/index.js";
import { ForwardChannel } from "../forward-channel.js";
import { ForwardPipeline, type LayerRange, type StageModel } from "../pipeline.js";
import { priorityRank, type BatchSlots } from "../batch-slots.js";
import { planStages, surveyGpuNodes, type GpuSurvey } from "../job-plan.js";
import type { ModelCache } from "../model-cache.js";
import { ModelLease, holderId, loadStageModel } from "../model-lease.js";
import type { Membership } from "../membership.js";
import type { CompiledCoordinatorOptions } from "../options.js";
import type { TokenizerPool } from "../tokenize/tokenizer-pool.js";
import { resolveServedModel, type ServedModel } from "../served-models.js";
import { serveModelMetrics, trackRequests } from "../serving-metrics.js";
import { checkPriorityAllowed, type Identity } from "./auth.js";
import { checkGenerateLimits } from "./limits.js";

/** What Generate needs from its coordinator. */
export interface GenerateDeps {
  options: CompiledCoordinatorOptions;
  models: ModelCache;
  membership: Membership;
  slots: BatchSlots;
  /** Tokenises prompts off the event loop, fairly among tenants. */
  tokenizers: TokenizerPool;
  attentionClient(address: string): Client<typeof Attention>;
  gpuClient(address: string): Client<typeof GpuNode>;
}

/** Codes of a failed Load that are about the node, not the model's files: their message is passed on. */
const NODE_STATE_CODES: ReadonlySet<Code> = new Set([
  Code.UNAVAILABLE,
  Code.CANCELLED,
  Code.DEADLINE_EXCEEDED,
  Code.RESOURCE_EXHAUSTED,
]);

/** Who calls and where the job's events go. */
export interface GenerateCaller {
  who: Identity;
  /** Aborts when the caller cancels (the job's sequences are then closed). */
  signal: AbortSignal;
  emit(event: MessageInitShape<typeof GenerateEventSchema>): void;
  /**
   * The tenant in whose turn the job's prompts are tokenised (the
   * tokeniser pool's round-robin); @default `who.tenant`. The job worker's
   * jobs run as an admin but queue as the tenant that submitted them.
   */
  queueAs?: string | undefined;
  /** Sees each token as it is sampled, and may stop its sequence (engine/context.ts). */
  onToken?: TokenListener | undefined;
  /** gen_ai.operation.name of its prompts' spans (engine/genai-spans.ts); @default "text_completion". */
  operation?: GenAiOperation | undefined;
}

/** A coordinator's Generate: runs one request; see {@link createGenerate}. */
export interface Generate {
  /**
   * Runs `req` for `caller` until every prompt is answered.
   * @throws RpcError NOT_FOUND (a model that is not served), INVALID_ARGUMENT
   * (bad request), FAILED_PRECONDITION (a served model that cannot be
   * loaded: why is logged, not sent), PERMISSION_DENIED
   * (a tenant asking priority "high"), ALREADY_EXISTS (its job id is running),
   * UNAVAILABLE (no gpu-node), CANCELLED.
   */
  run(req: GenerateRequest, caller: GenerateCaller): Promise<void>;
  /** Cancels every running job (the coordinator drains). */
  cancelAll(): void;
}

/** One pipeline stage: a gpu-node and its layer range; `i` its place. */
interface Stage {
  address: string;
  range: LayerRange;
  i: number;
}

/** Creates a coordinator's Generate (see the file comment). */
export function createGenerate(deps: GenerateDeps): Generate {
  const { options } = deps;
  const jobs = new Set<AbortController>();
  const runningJobIds = new Set<string>();
  const gpuLeases = new Map<string, ModelLease>();
  // This coordinator's name in the gpu-nodes' model leases.
  const holder = holderId();
  // The served models' serving metrics read 0 before their first request.
  serveModelMetrics(options.models.map((m) => m.name));

  async function run(req: GenerateRequest, caller: GenerateCaller): Promise<void> {
    const { who } = caller;
    const runKey = checkRequest(req, who, options);
    // Only a served model is ever opened (served-models.ts).
    const served = resolveServedModel(options.models, req.modelPath, req.tokenizerPath);
    const { modelPath } = served;
    if (req.kv === KvPlacement.AUTO && served.kv !== "auto") req = { ...req, kv: wireKvPlacement(served.kv) };
    if (runKey && runningJobIds.has(runKey)) {
      throw new RpcError(Code.ALREADY_EXISTS, `job_id: a job "${req.jobId}" is already running`);
    }
    const abort = new AbortController();
    // Every in-flight call of the job listens on this signal.
    setMaxListeners(0, abort.signal);
    const onCancel = () => abort.abort(new RpcError(Code.CANCELLED, "job cancelled"));
    caller.signal.addEventListener("abort", onCancel, { once: true });
    if (caller.signal.aborted) return;
    jobs.add(abort);
    if (runKey) runningJobIds.add(runKey);
    // Its prompts are requests of the serving metrics from here (running, waiting, finished).
    const requests = trackRequests({
      model: served.name,
      prompts: req.prompts.length,
      signal: abort.signal,
      kvNodes: () => [...deps.membership.up("memory"), ...deps.membership.up("storage")],
    });
    const releases: (() => void)[] = [];
    try {
      const model = await deps.models
        .get(modelPath, served.tokenizerPath)
        .catch((err: unknown) => unloadable(options.log, served, "", err));
      const { stages, gpuSurvey } = await planPipeline(deps, req, model, abort.signal);
      // Leases are taken in a fixed order, so two jobs cannot each hold one
      // stage the other waits for.
      // A lease per (model, layer range, embed, head): the node runs
      // whatever it loaded last, so jobs that split the layers otherwise
      // (another batch size or gpu set) wait their turn.
      for (const stage of stages) releases.push(await acquireLease(stage, stages.length, modelPath, abort.signal));
      // What each stage must hold: every step names it, so a node another
      // coordinator reloaded fails the step instead of answering wrong.
      const stageModels: StageModel[] = stages.map(({ range }) => ({
        modelId: "",
        layerStart: range.start,
        layerEnd: range.end,
      }));
      // Loads a stage's layer range; again when a restarted gpu-node
      // answers a step with "no model is loaded", or another coordinator's
      // Load replaced it (MODEL_MISMATCH).
      const loadStage = async (stage: Stage) => {
        const res = await loadLayers(stage, stages.length, served, abort.signal);
        stageModels[stage.i]!.modelId = res.modelId;
      };
      // One at a time, in address order: coordinators that share gpu-nodes
      // take the nodes' leases in the same order, so none holds a node
      // another waits for while waiting for one that other holds.
      for (const stage of [...stages].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0)))
        await loadStage(stage);
      const channel = new ForwardPipeline(
        stages.map(({ address }) => new ForwardChannel(deps.gpuClient(address))),
        stageModels,
      );
      try {
        await runBatch(req, {
          options,
          model,
          gpu: channel,
          stages,
          gpuSurvey,
          async reloadStage(address: string) {
            const stage = stages.find((st) => st.address === address);
            if (!stage) throw new RpcError(Code.NOT_FOUND, `gpu-node ${address} is not a stage of this job`);
            options.log(
              `gpu-node ${address}: not holding this job's model (restarted, or another coordinator loaded it); loading layers [${stage.range.start}, ${stage.range.end}) again`,
            );
            await loadStage(stage);
          },
          membership: deps.membership,
          attentionClient: deps.attentionClient,
          slots: deps.slots,
          signal: abort.signal,
          encodePrompts: (texts) =>
            deps.tokenizers
              .encode({ tokenizerPath: model.tokenizerPath, vocabSize: model.header.shape.vocabSize }, texts, {
                tenant: caller.queueAs ?? who.tenant,
                signal: abort.signal,
              })
              .catch((err: unknown) => {
                if (err instanceof RpcError) throw err;
                // A tokenizer file the worker thread could not load: as a model that cannot be loaded.
                return unloadable(options.log, served, "its tokenizer", err);
              }),
          requests,
          emit: caller.emit,
          onToken: caller.onToken,
          genai: { model: served.name, operation: caller.operation ?? "text_completion" },
        });
      } finally {
        channel.close();
      }
    } finally {
      requests.end();
      caller.signal.removeEventListener("abort", onCancel);
      for (const release of releases) release();
      jobs.delete(abort);
      if (runKey) runningJobIds.delete(runKey);
    }
  }

  /**
   * This job's share of a stage's node (a lease per model, layer range,
   * embed and head: the node runs whatever it loaded last, so jobs that
   * split the layers otherwise wait their turn). Resolves its release.
   * @throws the signal's reason when the job is cancelled while waiting.
   */
  function acquireLease(
    { address, range, i }: Stage,
    nStages: number,
    modelPath: string,
    signal: AbortSignal,
  ): Promise<() => void> {
    let lease = gpuLeases.get(address);
    if (!lease) gpuLeases.set(address, (lease = new ModelLease(() => releaseNode(address))));
    return lease.acquire(JSON.stringify([modelPath, range.start, range.end, i === 0, i === nStages - 1]), signal);
  }

  /**
   * Tells a gpu-node this coordinator's jobs on it are done (GpuNode.Release),
   * so another coordinator may load its model at once; a failure is logged
   * (the node's lease then lapses after its TTL).
   */
  async function releaseNode(address: string): Promise<void> {
    await deps
      .gpuClient(address)
      .release({ holder }, { deadline: options.connectTimeoutMs })
      .catch((err: unknown) => options.log(`gpu-node ${address}: Release failed: ${RpcError.from(err).message}`));
  }

  /**
   * Load of a stage's layers on its gpu-node as this coordinator (waiting
   * while another coordinator's lease is live: loadStageModel).
   * @throws RpcError naming the node and model when the Load fails: its
   *   code and reason, and the node's message only when it is about the
   *   node (down, cancelled, out of room, leased), never about the model's
   *   files (those go to the log).
   */
  function loadLayers(
    { range, address, i }: Stage,
    nStages: number,
    served: ServedModel,
    signal: AbortSignal,
  ): Promise<LoadResponse> {
    const { modelPath } = served;
    const req = { modelPath, layerStart: range.start, layerEnd: range.end, embed: i === 0, head: i === nStages - 1 };
    const opts = { retryTimeoutMs: options.retryTimeoutMs, log: options.log, address };
    return loadStageModel(deps.gpuClient(address), { ...req, holder }, opts, signal).catch((err: unknown) => {
      const e = RpcError.from(err);
      if (NODE_STATE_CODES.has(e.code) || e.reason === NodeErrorReason.LEASED) {
        throw new RpcError(e.code, `gpu-node ${address}: Load failed: ${e.message}`, {
          cause: err,
          metadata: e.metadata,
        });
      }
      options.log(`gpu-node ${address}: Load of model "${served.name}" (${modelPath}) failed: ${e.message}`);
      throw new RpcError(
        e.code,
        `gpu-node ${address} could not load model "${served.name}" (see the coordinator's log)`,
        {
          cause: err,
          metadata: e.metadata,
        },
      );
    });
  }

  return {
    run,
    cancelAll() {
      for (const j of jobs) j.abort();
    },
  };
}

/**
 * The pipeline: every gpu-node up a stage, in the order given (the first
 * embeds, the last applies the head), layers split by the planner in
 * proportion to the nodes' measured speed (evenly when one is unprofiled).
 * @throws RpcError UNAVAILABLE when no gpu-node is up or one is unreachable.
 */
async function planPipeline(
  deps: GenerateDeps,
  req: GenerateRequest,
  model: LoadedModel,
  signal: AbortSignal,
): Promise<{ stages: Stage[]; gpuSurvey: GpuSurvey[] }> {
  const { membership, options } = deps;
  const gpuNodes = membership.up("gpu");
  if (gpuNodes.length === 0) {
    throw new RpcError(
      Code.UNAVAILABLE,
      membership.all("gpu").length === 0
        ? `no gpu-node${options.nats ? ` has registered in "${options.natsPrefix}-nodes" at ${redactNatsServers(options.nats)}` : ""}`
        : `every gpu-node is down (${membership.all("gpu").join(", ")})`,
    );
  }
  await Promise.all(
    gpuNodes.map(async (address) => {
      try {
        await deps.gpuClient(address).waitForReady(options.connectTimeoutMs);
      } catch (err) {
        throw new RpcError(Code.UNAVAILABLE, `gpu-node at ${address} is unreachable: ${(err as Error).message}`);
      }
    }),
  );
  const gpuSurvey = await surveyGpuNodes(gpuNodes, deps.gpuClient, options.connectTimeoutMs, signal);
  const batch = Math.min(options.maxBatchSequences, req.prompts.length);
  const ranges = planStages(model.header.shape, gpuSurvey, {
    batch,
    // Rows of a prefill chunk (the activations a stage must hold).
    promptTokens: Math.ceil(options.maxPrefillTokens / batch),
    outputTokens: 1,
  });
  return { stages: ranges.map((range, i) => ({ range, address: gpuNodes[i]!, i })), gpuSurvey };
}

/**
 * A served model (or its tokenizer) that could not be loaded: why goes
 * to the operator's log, never to the caller (the files are the operator's).
 * @throws RpcError FAILED_PRECONDITION naming the model only, always.
 */
function unloadable(log: (line: string) => void, served: ServedModel, what: string, err: unknown): never {
  log(`model "${served.name}"${what ? `: ${what}` : ""} could not be loaded: ${(err as Error).message}`);
  throw new RpcError(
    Code.FAILED_PRECONDITION,
    `model "${served.name}" could not be loaded (see the coordinator's log)`,
  );
}

/**
 * Checks a Generate request against its caller: a tenant may not jump the
 * batch jobs' queue, and its job ids are its own (they cannot block a
 * stored job's run). Returns the key its job id runs under ("" for none).
 * @throws RpcError PERMISSION_DENIED or INVALID_ARGUMENT naming the field.
 */
function checkRequest(req: GenerateRequest, who: Identity, options: CompiledCoordinatorOptions): string {
  checkPriorityAllowed(who, req.priority);
  const runKey = req.jobId ? (who.admin ? req.jobId : tenantJobKey(who.tenant!, req.jobId)) : "";
  if (req.prompts.length === 0) throw new RpcError(Code.INVALID_ARGUMENT, "prompts: the batch is empty");
  const ids = new Set<string>();
  for (const p of req.prompts) {
    if (!p.id) throw new RpcError(Code.INVALID_ARGUMENT, "prompts: every prompt needs an id");
    if (ids.has(p.id)) throw new RpcError(Code.INVALID_ARGUMENT, `prompts: duplicate id "${p.id}"`);
    ids.add(p.id);
  }
  checkGenerateLimits(req, options.limits);
  if (req.priority && priorityRank(req.priority) === undefined) {
    throw new RpcError(
      Code.INVALID_ARGUMENT,
      `priority: must be high, normal or low (or empty), got ${JSON.stringify(req.priority)}`,
    );
  }
  return runKey;
}
