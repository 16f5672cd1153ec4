/**
 * What a batch run is given by its coordinator ({@link BatchContext}), and
 * the facts of one run every phase reads ({@link BatchJob}): the request,
 * its job id and nonce, the model's shape, and its sequences.
 */
import type { GenAiOperation } from "./genai-spans.js";
import type {
  Attention,
  Client,
  GenerateEventSchema,
  GenerateRequest,
  KvLayoutSchema,
  MessageInitShape,
} from "@tessera/proto";
import { nodeName as roleNodeName, runningNow } from "@tessera/core";
import type { CheckpointHeader, Tokenizer } from "@tessera/model";
import type { ForwardPipeline, LayerRange } from "../pipeline.js";
import type { BatchSlots } from "../batch-slots.js";
import type { Membership } from "../membership.js";
import type { CompiledCoordinatorOptions } from "../options.js";
import type { GpuSurvey } from "../job-plan.js";
import type { AttentionNodeRef, PlacementRequest, ShardPlacement } from "../placement.js";
import type { EncodedPrompt } from "../tokenize/tokenizer-pool.js";
import type { RequestTracker } from "../serving-metrics.js";
import type { Sequence } from "./sequence.js";

/** A model as the coordinator sees it: header (shape) and tokenizer. */
export interface LoadedModel {
  modelPath: string;
  tokenizerPath: string;
  header: CheckpointHeader;
  tokenizer: Tokenizer;
}

/** Everything a batch run needs from its coordinator. */
export interface BatchContext {
  options: CompiledCoordinatorOptions;
  model: LoadedModel;
  /** The gpu-nodes of the plan, as pipeline stages. */
  gpu: ForwardPipeline;
  /** The pipeline's stages (address and layer range, in order). */
  stages: readonly { address: string; range: LayerRange }[];
  /** What each gpu-node's Info said (price, profile, RTT), for the planner. */
  gpuSurvey: readonly GpuSurvey[];
  /**
   * Loads a stage's layer range on its gpu-node again (a gpu-node restarted
   * at the same address holds no model; the job's KV caches are on the
   * attention nodes, so the job goes on).
   * @throws RpcError when the Load fails.
   */
  reloadStage(address: string): Promise<void>;
  /** The live node set: attention nodes are taken from it at every placement; changes re-plan. */
  membership: Membership;
  /** Attention client of a node address (shared, owned by the coordinator). */
  attentionClient(address: string): Client<typeof Attention>;
  /**
   * The coordinator's running batch, shared with its other jobs: this
   * job's sequences join it as places free up, after the waiting sequences
   * of jobs ahead of it (higher priority, or older).
   */
  slots: BatchSlots;
  /** Aborts when the job is cancelled (or the coordinator drains). */
  signal: AbortSignal;
  /**
   * Token ids of each prompt text (BOS first, no EOS), in order, encoded with
   * the model's tokenizer off the event loop, fairly among tenants
   * (TokenizerPool.encode with the job's tenant and `signal`).
   * @throws RpcError CANCELLED when `signal` aborts.
   */
  encodePrompts(texts: readonly string[]): Promise<EncodedPrompt[]>;
  /** The batch's requests in the serving metrics (serving-metrics.ts): told of admissions, tokens and finishes. */
  requests: RequestTracker;
  /** Sends an event (progress, result, plan, summary) to the job's client. */
  emit(event: MessageInitShape<typeof GenerateEventSchema>): void;
  /** Sees each sampled token as it comes (see {@link TokenListener}). */
  onToken?: TokenListener | undefined;
  /** The served model's name and the GenAI operation of its prompts' spans (genai-spans.ts); @default the model file's name, "text_completion". */
  genai?: { model: string; operation: GenAiOperation } | undefined;
  /**
   * The clock of the job's retry windows (--retry-timeout, --failover) and
   * backoffs, in ms: time the coordinator was running (@tessera/core's
   * runningNow when unset; tests inject one), so a coordinator paused
   * (SIGSTOP, a long GC) does not use up a window while it was not running.
   */
  runningNow?: () => number;
}

/** `ctx`'s running-time clock now, in ms ({@link BatchContext.runningNow}). */
export function runningMsOf(ctx: Pick<BatchContext, "runningNow">): number {
  return (ctx.runningNow ?? runningNow)();
}

/**
 * Called with each token a sequence samples (BOS/EOS excepted): its
 * prompt's id, the token id and the text it decoded to (possibly "" while a
 * UTF-8 character is incomplete; the rest comes in the Result). Returning
 * "stop" finishes the sequence at once with finish reason "stop" (a stop
 * string was seen: the HTTP API's `stop`).
 */
export type TokenListener = (promptId: string, token: number, text: string) => "stop" | void;

/** The fixed facts of one batch run, shared by its phases. */
export interface BatchJob {
  readonly request: GenerateRequest;
  readonly ctx: BatchContext;
  /** The request's job id, or `job-<time>` when it has none. */
  readonly jobId: string;
  /** Keeps two jobs with the same id (or a retried job) from ever sharing a KV cache on an attention node. */
  readonly nonce: string;
  /** KV-head groups per sequence (options.kvHeadGroups). */
  readonly groups: number;
  /** Every prompt's sequence, in request order. */
  readonly seqs: Sequence[];
}

/** The KV layout of a shard: its group's KV heads and the query heads that read them. */
export function layoutOf(job: BatchJob, sh: ShardPlacement): MessageInitShape<typeof KvLayoutSchema> {
  const { shape } = job.ctx.model.header;
  const headsPerKv = shape.nHeads / shape.nKvHeads;
  return {
    nLayers: shape.nLayers,
    nHeads: (sh.kvHeadEnd - sh.kvHeadStart) * headsPerKv,
    nKvHeads: sh.kvHeadEnd - sh.kvHeadStart,
    headDim: shape.headDim,
  };
}

/** The KV placement a prompt asks for (memory, storage or auto): its own, else the request's. */
export function kvOf(job: BatchJob, s: Sequence): PlacementRequest["kv"] {
  return job.request.prompts[s.index]!.kv ?? job.request.kv;
}

/** "memory-node host:port" (@tessera/core's nodeName). */
export function nodeName(n: AttentionNodeRef): string {
  return roleNodeName(n.role, n.address);
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
