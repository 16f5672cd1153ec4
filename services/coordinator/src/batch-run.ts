/**
 * Runs one batch of prompts through the cluster: tokenise, admit sequences
 * into the running batch (at most `maxBatchSequences`, as KV capacity
 * allows; more join as others finish), then step until every one is done.
 * Each step carries, for every ready sequence, either its next prompt chunk
 * (prefill, at most `maxPrefillTokens` tokens per step over the batch) or
 * its last sampled token (decode); sampling is llama2.c run.c's; results are
 * detokenised and emitted as sequences finish.
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
 * packages/scheduler's planner (job-plan.ts): the plan's KV shares say how
 * many sequences each node holds, and placement follows them (see
 * placeSequences); each plan is sent as a Plan event and logged, as is
 * each placement wave. A node that does not answer at all at job start is
 * marked lost at once.
 */
import { context, TraceFlags, trace, type Span } from "@opentelemetry/api";
import {
  endSpanWhen,
  Attention,
  Code,
  RpcError,
  type Client,
  type ForwardResponse,
  type GenerateRequest,
  type MessageInitShape,
  type GenerateEventSchema,
  type JobPlan,
  type ForwardRequestSchema,
  type KvLayoutSchema,
} from "@tessera/proto";
import { tensorF32 } from "@tessera/core";
import {
  createDecoder,
  createSampler,
  type CheckpointHeader,
  type Sampler,
  type StreamingDecoder,
  type Tokenizer,
} from "@tessera/model";
import type { ForwardPipeline } from "./pipeline.js";
import type { BatchSlots } from "./batch-slots.js";
import type { Membership, MembershipChange } from "./membership.js";
import type { CompiledCoordinatorOptions } from "./options.js";
import {
  describeJobPlan,
  jobPlanMessage,
  planKv,
  surveyAttentionNodes,
  type GpuSurvey,
  type JobWorkload,
} from "./job-plan.js";
import type { LayerRange } from "./pipeline.js";
import { recordJobCost, recordStep, recordTokens, watchSlots } from "./metrics.js";
import {
  kvRole,
  placeSequences,
  splitKvHeads,
  type AttentionNodeInfo,
  type AttentionNodeRef,
  type PlacementEconomics,
  type ShardPlacement,
} from "./placement.js";

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
  /** Sends an event (progress, result, plan, summary) to the job's client. */
  emit(event: MessageInitShape<typeof GenerateEventSchema>): void;
}

const MiB = 1024 ** 2;

/** "$0.50/h, 12.3 GB/s" with "?" for an unknown figure. */
function describePrice(info: AttentionNodeInfo | undefined): string {
  const price = info && info.pricePerHour > 0 ? `$${info.pricePerHour}/h` : "$?/h";
  const bw = info && info.readBytesPerSecond > 0 ? `${(info.readBytesPerSecond / 1e9).toFixed(1)} GB/s` : "? GB/s";
  return `${price}, ${bw}`;
}

/** Default of `max_tokens` when neither the prompt nor the request sets it (0 = unset). */
export const DEFAULT_MAX_TOKENS = 256;
/** Default of `top_p` when neither the prompt nor the request sets it (0 = unset). */
export const DEFAULT_TOP_P = 0.9;

type FinishReason = "stop" | "length" | "error";

interface Sequence {
  index: number;
  id: string;
  /** The id its KV cache is known by on its attention nodes (and to the gpu-nodes); a new one per move. */
  seqId: string;
  /** Times its KV cache moved to other nodes. */
  moves: number;
  /** Set while it has no node (moved off a lost one, none of its role up yet): since when (ms since epoch) and why. */
  homeless?: { since: number; reason: string };
  /**
   * Set while opening its KV cache fails because the node does not answer
   * (killed, restarting): since when, why, and when to try again.
   */
  openRetry?: { since: number; reason: string; notBefore: number; delay: number; tries: number };
  prompt: string;
  promptIds: number[];
  maxTokens: number;
  generated: number[];
  /** Positions whose K/V are written (tokens fed so far). */
  fed: number;
  /** Where its KV heads are (one shard of all heads when unsplit); empty until placed. */
  shards: Shard[];
  /** Every shard is open. */
  opened: boolean;
  sampler?: Sampler;
  decoder?: StreamingDecoder;
  completion: string;
  finished?: FinishReason;
  startedAt: number;
  firstTokenAt?: number;
  /**
   * Set while its attention node is failing: when it started (ms since
   * epoch), why, and the failing node's address and role (a storage-node's
   * sequences wait for it longer: their KV survives a restart on disk).
   */
  waiting?: {
    since: number;
    reason: string;
    nextTry: number;
    delay: number;
    node: { address: string; role: string };
  };
}

/** One KV-head group of a sequence on its attention node, known there as `seqId`. */
interface Shard extends ShardPlacement {
  seqId: string;
  opened: boolean;
}

/** One sequence's share of a step. */
interface Part {
  s: Sequence;
  /** The sequence's seqId when the step was built: a sequence moved meanwhile ignores the step's answer. */
  seqId: string;
  startPos: number;
  tokens: number[];
}

/** Totals of decode steps, in seconds. */
interface Breakdown {
  steps: number;
  stepSeconds: number;
  denseSeconds: number;
  attentionComputeSeconds: number;
  attentionWaitSeconds: number;
  gpuTotalSeconds: number;
}

/** Codes after which an attention node's sequences wait for it instead of failing. */
const TRANSIENT = new Set<number>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.NOT_FOUND]);
/** Errors of OpenSequence after which the sequence is placed again (the node did not answer). */
const OPEN_RETRY = new Set<number>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED]);

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
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

/**
 * Runs `request` to completion. Bad prompts (too long, unplaceable,
 * untokenisable) get an error Result and the rest go on; see the file
 * comment for node failures. Every KV cache the job opened is closed before
 * it returns, however it ends.
 * @throws RpcError CANCELLED when `ctx.signal` aborts.
 */
export function runBatch(request: GenerateRequest, ctx: BatchContext): Promise<void> {
  const parent = trace.getSpan(context.active());
  // Tracing off (no SDK) or this job not sampled: no spans at all.
  if (!parent?.isRecording()) return runBatchTraced(request, ctx, undefined);
  const attributes = {
    "tessera.job_id": request.jobId,
    "tessera.batch.prompts": request.prompts.length,
    "tessera.batch.max_sequences": ctx.options.maxBatchSequences,
    "tessera.kv_head_groups": ctx.options.kvHeadGroups,
    "tessera.stages": ctx.stages.map((s) => `${s.address}[${s.range.start},${s.range.end})`),
  };
  return tracer.startActiveSpan("tessera.batch", { attributes }, async (span) => {
    const emit = ctx.emit;
    const traced: BatchContext = {
      ...ctx,
      emit: (event) => {
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
    await endSpanWhen(span, runBatchTraced(request, traced, span));
  });
}

const tracer = trace.getTracer("@tessera/coordinator");

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

async function runBatchTraced(request: GenerateRequest, ctx: BatchContext, batchSpan: Span | undefined): Promise<void> {
  const { model, options, signal, membership } = ctx;
  const { shape } = model.header;
  const t0 = performance.now();
  const sampling = request.sampling;
  // The nonce keeps two jobs with the same id (or a retried job) from ever
  // sharing a KV cache on an attention node.
  const nonce = Math.random().toString(36).slice(2, 8);
  const jobId = request.jobId || `job-${Date.now().toString(36)}`;
  const groups = options.kvHeadGroups;
  try {
    splitKvHeads(shape.nKvHeads, groups);
  } catch (err) {
    throw new RpcError(Code.INVALID_ARGUMENT, (err as Error).message, { cause: err });
  }
  const headsPerKv = shape.nHeads / shape.nKvHeads;
  // A shard's layout: its group's KV heads and the query heads that read them.
  const layoutOf = (sh: ShardPlacement): MessageInitShape<typeof KvLayoutSchema> => ({
    nLayers: shape.nLayers,
    nHeads: (sh.kvHeadEnd - sh.kvHeadStart) * headsPerKv,
    nKvHeads: sh.kvHeadEnd - sh.kvHeadStart,
    headDim: shape.headDim,
  });
  const maxPositions = (s: Sequence) => s.promptIds.length + s.maxTokens - 1;
  const kvOf = (s: Sequence) => request.prompts[s.index]!.kv ?? request.kv;
  // Positions fed by prefill: the prompt, and after a move every generated
  // token but the last (which the next decode step feeds, as before).
  const prefillEnd = (s: Sequence) => s.promptIds.length + Math.max(0, s.generated.length - 1);
  const nodeName = (n: AttentionNodeRef) => `${n.role}-node ${n.address}`;
  const kvNodes = (s: Sequence) => s.shards.map((sh) => `${sh.node.role}@${sh.node.address}`).join(",");

  let done = 0;
  let generatedTotal = 0;
  let promptTokens = 0;
  let decodeTokens = 0;
  let decodeStart: number | undefined;
  let lastProgress = 0;
  const total = request.prompts.length;
  const breakdown: Breakdown = {
    steps: 0,
    stepSeconds: 0,
    denseSeconds: 0,
    attentionComputeSeconds: 0,
    attentionWaitSeconds: 0,
    gpuTotalSeconds: 0,
  };
  const releases = new Set<Promise<void>>();
  const cleanups: (() => void)[] = [];
  let blocked = false;
  // ctx.slots.freed when `blocked` was set: another job freeing places
  // (and with them KV capacity) unblocks this one too.
  let blockedAt = 0;
  let revision = 0;
  let lastPlan: JobPlan | undefined;
  // Price, bandwidth, room and the plan's shares of each attention node, for placement.
  const economics: PlacementEconomics = {
    nodes: new Map(),
    bytesPerPositionHead: shape.nLayers * 2 * shape.headDim * 4,
  };
  // Plans (or re-plans) the job with packages/scheduler's planner on the
  // attention nodes up now (their Info asked afresh), for the role most of
  // its unfinished sequences need; announces the plan as a Plan event.
  // Runs one at a time, in order.
  let planning: Promise<void> = Promise.resolve();
  const replan = (reason: string, moved: number) =>
    (planning = planning
      .then(async () => {
        const up = [
          ...membership.up("memory").map((address) => ({ role: "memory" as const, address })),
          ...membership.up("storage").map((address) => ({ role: "storage" as const, address })),
        ];
        const surveys = await surveyAttentionNodes(
          up,
          ctx.attentionClient,
          options.connectTimeoutMs,
          signal,
          (n, e) => {
            if (e.code === Code.UNAVAILABLE && revision === 0) {
              // Not answering at all at job start: nothing is placed on it
              // until it is back. (Not at a re-plan, nor for a slow answer:
              // marking a node lost moves every job's sequences off it,
              // which failing steps decide after failoverMs.)
              options.log(`job ${jobId}: ${n.role}-node ${n.address}: no answer (${e.message}); marked lost`);
              membership.markDown(n.address, `${n.role}-node ${n.address}: ${e.message}`);
            } else {
              options.log(`job ${jobId}: ${n.role}-node ${n.address}: no Info (${e.message}); placed by load only`);
            }
          },
        );
        // Bytes this job holds on each node now: the node's used_bytes
        // counts them, and placement adds the job's own load again, so the
        // room of others' use is capacity - (used - this job's).
        const own = new Map<string, number>();
        for (const q of seqs) {
          if (q.finished) continue;
          for (const sh of q.shards) {
            if (!sh.opened) continue;
            const bytes = maxPositions(q) * (sh.kvHeadEnd - sh.kvHeadStart) * economics.bytesPerPositionHead;
            own.set(sh.node.address, (own.get(sh.node.address) ?? 0) + bytes);
          }
        }
        const nodes = new Map<string, AttentionNodeInfo>();
        for (const sv of surveys) {
          const othersUse = Math.max(0, Number(sv.info.usedBytes) - (own.get(sv.address) ?? 0));
          sv.info.usedBytes = BigInt(othersUse);
          const info: AttentionNodeInfo = {
            pricePerHour: sv.info.pricePerHour,
            readBytesPerSecond: sv.info.readBytesPerSecond,
            capacityBytes: Number(sv.info.capacityBytes),
            usedBytes: othersUse,
          };
          nodes.set(sv.address, info);
          if (revision === 0) {
            options.log(
              `job ${jobId}: ${sv.role}-node ${sv.address}: ${describePrice(info)}, ` +
                `${((info.capacityBytes - info.usedBytes) / MiB).toFixed(1)} of ${(info.capacityBytes / MiB).toFixed(1)} MiB free` +
                `${sv.info.profile ? ", profiled" : ""}`,
            );
          }
        }
        // The role most unfinished sequences need, and their workload.
        const lists = { memory: membership.up("memory"), storage: membership.up("storage") };
        const byRole = { memory: [] as Sequence[], storage: [] as Sequence[] };
        for (const s of seqs) {
          if (s.finished) continue;
          byRole[
            kvRole(
              { positions: maxPositions(s), kv: request.prompts[s.index]!.kv ?? request.kv },
              lists,
              options.storageThresholdTokens,
            )
          ].push(s);
        }
        const role = byRole.storage.length > byRole.memory.length ? "storage" : "memory";
        const mine = byRole[role];
        const workload: JobWorkload = {
          batch: Math.max(1, Math.min(options.maxBatchSequences, mine.length)),
          promptTokens: Math.max(1, ...mine.map((s) => s.promptIds.length + s.generated.length)),
          outputTokens: Math.max(1, ...mine.map((s) => s.maxTokens)),
        };
        const candidates = surveys.filter((sv) => sv.role === role);
        const kv =
          candidates.length > 0 && mine.length > 0
            ? planKv(shape, ctx.gpuSurvey, candidates, workload, groups)
            : undefined;
        economics.nodes = nodes;
        economics.shares = options.kvPlacement === "plan" ? kv?.shares : undefined;
        revision++;
        const plan = jobPlanMessage(
          kv,
          { revision, reason, movedSequences: moved, stages: ctx.stages, kvHeadGroups: groups, batch: workload.batch },
          mine.length === 0 ? "no sequence left to place" : `no ${role}-node up: sequences wait for one`,
        );
        lastPlan = plan;
        options.log(`job ${jobId}: ${describeJobPlan(plan)}${moved > 0 ? `; ${moved} sequence(s) move` : ""}`);
        ctx.emit({ event: { case: "plan", value: plan } });
        blocked = false;
      })
      .catch((err: unknown) => {
        // Placement goes on with the previous plan's figures.
        options.log(`job ${jobId}: re-plan (${reason}) failed: ${(err as Error).message}`);
      }));

  const progress = (force = false) => {
    const now = performance.now();
    if (!force && now - lastProgress < 250) return;
    lastProgress = now;
    const elapsed = (now - t0) / 1000;
    ctx.emit({
      event: {
        case: "progress",
        value: {
          promptsDone: done,
          promptsTotal: total,
          tokensGenerated: BigInt(generatedTotal),
          elapsedSeconds: elapsed,
          tokensPerSecond: elapsed > 0 ? generatedTotal / elapsed : 0,
        },
      },
    });
  };

  // Frees a sequence's KV cache (every opened shard) on its attention
  // nodes. Runs in the background; runBatch awaits every release before it
  // returns.
  const release = (s: Sequence) => {
    s.opened = false;
    closeShards(s.shards);
  };
  // Closes every opened shard of `shards` in the background (see release).
  const closeShards = (shards: readonly Shard[]) => {
    for (const sh of shards) {
      if (!sh.opened) continue;
      sh.opened = false;
      const p = ctx
        .attentionClient(sh.node.address)
        .closeSequence({ seqId: sh.seqId }, { deadline: options.connectTimeoutMs })
        .then(
          () => undefined,
          (err: unknown) => options.log(`close ${sh.seqId} on ${nodeName(sh.node)}: ${(err as Error).message}`),
        )
        .finally(() => {
          releases.delete(p);
          // Capacity was freed: sequences refused for room may try again.
          blocked = false;
        });
      releases.add(p);
    }
  };

  const finish = (s: Sequence, reason: FinishReason, error?: string) => {
    if (s.finished) return;
    s.finished = reason;
    s.waiting = undefined;
    s.completion += s.decoder?.flush() ?? "";
    const now = performance.now();
    const first = s.firstTokenAt ?? now;
    done++;
    ctx.emit({
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
    progress(true);
    release(s);
  };

  // 1. Tokenise each prompt and check it against the model's context. Proto3
  //    scalars cannot be absent, so 0 in the request's sampling means unset.
  const seqs: Sequence[] = request.prompts.map((p, index) => {
    const s: Sequence = {
      index,
      id: p.id,
      seqId: `${jobId}-${nonce}-${index}`,
      moves: 0,
      prompt: p.prompt,
      promptIds: [],
      maxTokens: 0,
      generated: [],
      fed: 0,
      shards: [],
      opened: false,
      completion: "",
      startedAt: performance.now(),
    };
    try {
      s.promptIds = model.tokenizer.encode(p.prompt, { bos: true, eos: false });
      promptTokens += s.promptIds.length;
      const wanted = p.maxTokens ?? (sampling?.maxTokens || DEFAULT_MAX_TOKENS);
      // As run.c, the last sampled token is never fed back, so a sequence
      // can generate up to seq_len - prompt + 1 tokens.
      s.maxTokens = Math.min(wanted, shape.seqLen - s.promptIds.length + 1);
      s.decoder = createDecoder(model.tokenizer, s.promptIds[s.promptIds.length - 1]);
      if (s.promptIds.length >= shape.seqLen) {
        finish(s, "error", `prompt is ${s.promptIds.length} tokens; the model's context is ${shape.seqLen} positions`);
      } else if (wanted <= 0) {
        finish(s, "length");
      } else {
        s.sampler = createSampler({
          vocabSize: shape.vocabSize,
          temperature: p.temperature ?? sampling?.temperature ?? 0,
          topP: p.topP ?? (sampling?.topP || DEFAULT_TOP_P),
          // As run.c, a seed of 0 (unset) becomes the clock: xorshift would stay 0.
          seed: p.seed || sampling?.seed || BigInt(Date.now()),
        });
      }
    } catch (err) {
      finish(s, "error", `prompt "${p.id}": ${(err as Error).message}`);
    }
    return s;
  });

  // This job's place in the coordinator's running batch.
  const place = ctx.slots.join(request.priority);
  const unwatchSlots = watchSlots(ctx.slots);
  try {
    await replan("job start", 0);
    // 2. Admission (continuous batching): sequences join the running batch
    //    in input order while it holds fewer than maxBatchSequences and
    //    their attention node has room. One refused for capacity waits
    //    until a running sequence is released, and fails only when nothing
    //    else holds capacity.
    const pending = seqs.filter((s) => !s.finished);
    const running = () => seqs.filter((s) => s.opened && !s.finished);
    // Attention nodes whose calls failed in a step and have not answered since.
    const failingNodes = new Set<string>();
    // Moves a sequence off its attention nodes: its KV cache is closed where
    // it can be and rebuilt wherever placement puts it next (prompt + tokens
    // so far, prefilled under a new id), its sampler and tokens kept.
    const move = (s: Sequence, reason: string, since = Date.now()) => {
      if (s.finished) return;
      release(s);
      s.shards = [];
      s.opened = false;
      s.waiting = undefined;
      s.fed = 0;
      s.moves++;
      s.seqId = `${jobId}-${nonce}-${s.index}~${s.moves}`;
      s.homeless = { since, reason };
      if (!pending.includes(s)) {
        pending.push(s);
        pending.sort((a, b) => a.index - b.index);
      }
    };
    // Re-plans after a change of the cluster: sequences on a node that left
    // or was lost move; a node that joined or came back takes newcomers.
    const onChange = (c: MembershipChange) => {
      if (c.role === "gpu") return; // the pipeline is fixed for the job (issue 5 re-plans gpu-nodes)
      let moved = 0;
      if (c.kind === "left" || c.kind === "lost") {
        failingNodes.delete(c.address);
        for (const s of seqs) {
          if (s.finished || !s.shards.some((sh) => sh.node.address === c.address)) continue;
          move(s, s.waiting?.reason ?? `${c.role}-node ${c.address}: ${c.reason}`, s.waiting?.since);
          moved++;
        }
      }
      blocked = false; // room may have appeared (or sequences moved)
      void replan(`${c.role}-node ${c.address} ${c.kind}${c.kind === "lost" ? ` (${c.reason})` : ""}`, moved);
    };
    const unsubscribe = membership.subscribe(onChange);
    cleanups.push(unsubscribe);
    // Opens every shard of `s`; a refusal for capacity (returned) closes
    // the shards that did open, any other failure finishes the sequence.
    // Returns "moved" when the sequence moved (or finished) while its
    // shards were opening: what opened is closed, and move() has queued it.
    const open = async (
      s: Sequence,
      placed: readonly ShardPlacement[],
    ): Promise<string | "moved" | "retry" | undefined> => {
      const id = s.seqId;
      const shards: Shard[] = placed.map((p) => ({
        ...p,
        seqId: groups === 1 ? s.seqId : `${s.seqId}#h${p.kvHeadStart}-${p.kvHeadEnd}`,
        opened: false,
      }));
      s.shards = shards;
      const outcomes = await Promise.all(
        shards.map(async (sh) => {
          try {
            const res = await ctx
              .attentionClient(sh.node.address)
              .openSequence(
                { seqId: sh.seqId, layout: layoutOf(sh), maxPositions: maxPositions(s) },
                { deadline: options.connectTimeoutMs, signal },
              );
            sh.opened = true;
            if (res.length !== 0) return { fatal: `${nodeName(sh.node)} already holds a sequence ${sh.seqId}` };
          } catch (err) {
            // A node's own errors name it; transport errors do not.
            const e = RpcError.from(err);
            const name = nodeName(sh.node);
            const message = e.message.startsWith(name) ? e.message : `${name}: ${e.message}`;
            if (e.code === Code.RESOURCE_EXHAUSTED) return { refused: message };
            return OPEN_RETRY.has(e.code) ? { unavailable: message, node: sh.node } : { fatal: message };
          }
          return {};
        }),
      );
      if (s.seqId !== id || s.finished) {
        closeShards(shards);
        return "moved";
      }
      const fatal = outcomes.find((o) => o.fatal)?.fatal;
      if (fatal !== undefined) {
        finish(s, "error", fatal);
        return undefined;
      }
      const down = outcomes.find((o) => o.unavailable !== undefined);
      if (down?.unavailable !== undefined) {
        // Its node does not answer: the sequence is placed again after a
        // backoff (the node may be back, or known lost and avoided by
        // then); a memory-node failing for failoverMs is marked down; after
        // retryTimeoutMs the sequence fails.
        const now = Date.now();
        const r = (s.openRetry ??= { since: now, reason: down.unavailable, notBefore: now, delay: 50, tries: 0 });
        r.reason = down.unavailable;
        r.delay = Math.min(r.delay * 2, 2000);
        r.notBefore = now + r.delay;
        r.tries++;
        // An open that timed out may still have landed: close every shard
        // (best effort), and open under a new id next time, so that a late
        // close cannot hit the new cache.
        for (const sh of s.shards) sh.opened = true;
        closeShards(s.shards);
        s.shards = [];
        s.seqId = `${jobId}-${nonce}-${s.index}~${s.moves}.${r.tries}`;
        if (now - r.since > options.retryTimeoutMs) {
          finish(
            s,
            "error",
            `${r.reason} (gave up opening its KV cache after ${Math.round((now - r.since) / 1000)} s)`,
          );
          return undefined;
        }
        if (down.node?.role === "memory" && now - r.since > Math.min(options.failoverMs, options.retryTimeoutMs)) {
          membership.markDown(down.node.address, r.reason);
        }
        options.log(`${s.seqId}: cannot open its KV cache: ${r.reason}; trying again in ${r.delay} ms`);
        return "retry";
      }
      s.openRetry = undefined;
      const refused = outcomes.find((o) => o.refused)?.refused;
      if (refused !== undefined) {
        // Close the shards that did open before the next try, outside
        // `releases`: they free no room for anyone else.
        await Promise.all(
          s.shards
            .filter((sh) => sh.opened)
            .map((sh) =>
              ctx
                .attentionClient(sh.node.address)
                .closeSequence({ seqId: sh.seqId }, { deadline: options.connectTimeoutMs })
                .then(
                  () => (sh.opened = false),
                  (err: unknown) => options.log(`close ${sh.seqId} on ${nodeName(sh.node)}: ${(err as Error).message}`),
                ),
            ),
        );
        if (s.shards.some((sh) => sh.opened)) release(s); // a close failed: let release() retry it in the background
        return refused;
      }
      s.opened = true;
      return undefined;
    };
    // One line per node of a placement wave: groups placed, price and the
    // predicted $ per decoded token of all of them together.
    const logPlacement = (n: number, placements: ReturnType<typeof placeSequences>) => {
      if (n === 0) return;
      const perNode = new Map<string, { node: AttentionNodeRef; groups: number; dollars: number | undefined }>();
      for (const p of placements) {
        if (!("shards" in p)) continue;
        for (const sh of p.shards) {
          const e = perNode.get(sh.node.address) ?? { node: sh.node, groups: 0, dollars: 0 };
          e.groups++;
          e.dollars =
            e.dollars === undefined || sh.dollarsPerToken === undefined ? undefined : e.dollars + sh.dollarsPerToken;
          perNode.set(sh.node.address, e);
        }
      }
      const parts = [...perNode.values()].map(
        (e) =>
          `${e.groups} on ${nodeName(e.node)} (${describePrice(economics.nodes.get(e.node.address))}; predicted ` +
          `${e.dollars === undefined ? "$?" : `$${e.dollars.toExponential(3)}`} per decode step)`,
      );
      options.log(
        `job ${jobId}: placed ${n} sequence(s)${groups > 1 ? ` in ${groups} KV-head groups` : ""}: ${parts.join("; ")}`,
      );
    };
    const admit = async () => {
      for (;;) {
        // A moved sequence with no node of its role up waits for one (a
        // node back or added) until retryTimeoutMs after it lost its node,
        // without holding up the sequences behind it.
        const now = Date.now();
        const lists = { memory: membership.up("memory"), storage: membership.up("storage") };
        const stuck = (s: Sequence) =>
          s.homeless !== undefined &&
          lists[kvRole({ positions: maxPositions(s), kv: kvOf(s) }, lists, options.storageThresholdTokens)].length ===
            0;
        for (const s of pending.filter((p) => stuck(p) && now - p.homeless!.since > options.retryTimeoutMs)) {
          pending.splice(pending.indexOf(s), 1);
          const role = kvRole({ positions: maxPositions(s), kv: kvOf(s) }, lists, options.storageThresholdTokens);
          finish(
            s,
            "error",
            `${s.homeless!.reason} (gave up after ${Math.round((now - s.homeless!.since) / 1000)} s: no ${role}-node up)`,
          );
        }
        if (blocked && ctx.slots.freed !== blockedAt) blocked = false;
        const ready = pending.filter((p) => !stuck(p) && !(p.openRetry && p.openRetry.notBefore > now));
        // Places in the coordinator's batch go to the jobs ahead of this one
        // first; sequences waiting for KV capacity claim none.
        place.update(running().length, blocked ? 0 : ready.length);
        if (blocked || ready.length === 0) return;
        const room = Math.min(options.maxBatchSequences - running().length, place.room());
        if (room <= 0) return;
        const batch = ready.slice(0, room);
        for (const b of batch) pending.splice(pending.indexOf(b), 1);
        // Opening: their places are taken already (another job admitting
        // meanwhile sees them).
        place.update(running().length + batch.length, ready.length - batch.length);
        // Load in position-heads, as placeSequences counts it.
        const load = new Map<string, number>();
        for (const r of running()) {
          for (const sh of r.shards) {
            const a = sh.node.address;
            load.set(a, (load.get(a) ?? 0) + maxPositions(r) * (sh.kvHeadEnd - sh.kvHeadStart));
          }
        }
        const placements = placeSequences(
          batch.map((s) => ({ positions: maxPositions(s), kv: kvOf(s) })),
          lists,
          options.storageThresholdTokens,
          load,
          { nKvHeads: shape.nKvHeads, groups },
          economics,
        );
        logPlacement(batch.length, placements);
        const outcomes = await Promise.all(
          batch.map(async (s, i) => {
            const placement = placements[i]!;
            if ("shards" in placement) {
              s.homeless = undefined;
              return open(s, placement.shards);
            }
            finish(s, "error", placement.error);
            return undefined;
          }),
        );
        place.update(running().length, 0);
        // Their node did not answer: queued again, tried after a backoff.
        const again = batch.filter((_, i) => outcomes[i] === "retry");
        if (again.length > 0) {
          pending.push(...again);
          pending.sort((a, b) => a.index - b.index);
        }
        // Refused for room (a message); "moved" ones are queued again by move().
        const refusals = outcomes.map((o) => (o === "moved" || o === "retry" ? undefined : o));
        const refused = batch.filter((_, i) => refusals[i] !== undefined);
        if (refused.length === 0) continue;
        if (running().length === 0 && releases.size === 0 && ctx.slots.running === 0) {
          // Nothing will free capacity (no sequence of this or another job
          // holds any): these can never fit.
          batch.forEach((s, i) => refusals[i] !== undefined && finish(s, "error", refusals[i]));
          continue;
        }
        for (const s of refused) s.shards = [];
        pending.unshift(...refused);
        blocked = true;
        blockedAt = ctx.slots.freed;
        options.log(`${refused.length} sequence(s) wait for KV capacity: ${refusals.find((r) => r)}`);
      }
    };

    // Sequences whose node failed: give up after retryTimeoutMs, else try to
    // re-open them on their node (with backoff) and check the KV cache
    // survived: a storage-node keeps it across a restart, a memory-node not.
    const revive = async () => {
      const now = Date.now();
      await Promise.all(
        seqs.map(async (s) => {
          const w = s.waiting;
          if (s.finished || !w || s.shards.length === 0 || now < w.nextTry) return;
          // Failing for too long: the node is lost (its sequences move). The
          // node the sequence waits for, not whether it is still failing:
          // another sequence's re-open may already have cleared it.
          const storage = w.node.role === "storage";
          const limit = storage ? options.retryTimeoutMs : Math.min(options.failoverMs, options.retryTimeoutMs);
          if (now - w.since > limit) {
            for (const sh of s.shards)
              if (failingNodes.has(sh.node.address)) membership.markDown(sh.node.address, w.reason);
            // markDown moved it unless the node was already marked (then move it here).
            if (s.shards.length > 0 && !s.finished) move(s, w.reason, w.since);
            return;
          }
          const id = s.seqId;
          const shards = s.shards;
          try {
            // Every shard: re-opening one that is fine is a no-op.
            const lengths = await Promise.all(
              shards.map(async (sh) => {
                const res = await ctx
                  .attentionClient(sh.node.address)
                  .openSequence(
                    { seqId: sh.seqId, layout: layoutOf(sh), maxPositions: maxPositions(s) },
                    { deadline: 1000, signal },
                  );
                return res.length;
              }),
            );
            if (s.seqId !== id) {
              // Moved meanwhile: what the re-open (re)created is not used.
              for (const sh of shards) sh.opened = true;
              closeShards(shards);
              return;
            }
            const lost = lengths.findIndex((n) => n < s.fed);
            if (lost >= 0) {
              const reason = `the KV cache of prompt "${s.id}" was lost on ${nodeName(s.shards[lost]!.node)} (it holds ${lengths[lost]} of ${s.fed} positions)`;
              options.log(`job ${jobId}: ${reason}; rebuilding it`);
              move(s, reason, w.since);
              void replan(reason, 1);
            } else {
              for (const sh of s.shards) failingNodes.delete(sh.node.address);
              options.log(`${s.seqId}: ${[...new Set(s.shards.map((sh) => nodeName(sh.node)))].join(", ")} back`);
              s.waiting = undefined;
            }
          } catch {
            w.delay = Math.min(w.delay * 2, 2000);
            w.nextTry = Date.now() + w.delay;
          }
        }),
      );
    };

    let stepId = 0n;
    let gpuFailingSince: number | undefined;
    let gpuDelay = 100;
    // Runs one step. Returns the logits row of each sequence that was in the
    // step that succeeded; sequences of a failing attention node are left
    // waiting (or finished) and the step is re-sent without them.
    const step = async (parts: readonly Part[], isDecode: boolean): Promise<Map<Sequence, Float32Array>> => {
      const rows = new Map<Sequence, Float32Array>();
      for (;;) {
        if (signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
        const alive = parts.filter((p) => !p.s.finished && !p.s.waiting && p.s.seqId === p.seqId);
        if (alive.length === 0) return rows;
        stepId++;
        const req: MessageInitShape<typeof ForwardRequestSchema> & { stepId: bigint } = {
          stepId,
          sequences: alive.map((p) =>
            p.s.shards.length === 1 && groups === 1
              ? {
                  seqId: p.s.seqId,
                  startPos: p.startPos,
                  nTokens: p.tokens.length,
                  attentionAddress: p.s.shards[0]!.node.address,
                }
              : {
                  seqId: p.s.seqId,
                  startPos: p.startPos,
                  nTokens: p.tokens.length,
                  shards: p.s.shards.map((sh) => ({
                    address: sh.node.address,
                    seqId: sh.seqId,
                    kvHeadStart: sh.kvHeadStart,
                    kvHeadEnd: sh.kvHeadEnd,
                  })),
                },
          ),
          tokens: alive.flatMap((p) => p.tokens),
        };
        const ts = performance.now();
        let res: ForwardResponse | undefined;
        try {
          res = await ctx.gpu.step(req);
        } catch (err) {
          const e = RpcError.from(err);
          if (await gpuRetry(e.message)) continue;
          for (const p of alive) finish(p.s, "error", e.message);
          return rows;
        }
        const failure = res.error;
        if (!failure) {
          recordStep(isDecode, (performance.now() - ts) / 1000);
          gpuFailingSince = undefined;
          gpuDelay = 100;
          const logits = tensorF32(res.logits, "logits");
          const vocab = shape.vocabSize;
          if (logits.length !== alive.length * vocab) {
            for (const p of alive) finish(p.s, "error", `gpu-node ${ctx.gpu.address}: logits of the wrong shape`);
            return rows;
          }
          alive.forEach((p, i) => rows.set(p.s, logits.subarray(i * vocab, (i + 1) * vocab)));
          if (res.timings) {
            trace.getActiveSpan()?.setAttributes({
              "tessera.gpu.dense_seconds": res.timings.denseSeconds,
              "tessera.gpu.attention_wait_seconds": res.timings.attentionWaitSeconds,
              "tessera.gpu.attention_compute_seconds": res.timings.attentionComputeSeconds,
              "tessera.gpu.total_seconds": res.timings.totalSeconds,
            });
          }
          if (isDecode && res.timings) {
            const t = res.timings;
            breakdown.steps++;
            breakdown.stepSeconds += (performance.now() - ts) / 1000;
            breakdown.denseSeconds += t.denseSeconds;
            breakdown.attentionComputeSeconds += t.attentionComputeSeconds;
            breakdown.attentionWaitSeconds += t.attentionWaitSeconds;
            breakdown.gpuTotalSeconds += t.totalSeconds;
          }
          return rows;
        }
        const onNode = failure.address
          ? alive.filter((p) => p.s.shards.some((sh) => sh.node.address === failure.address))
          : [];
        if (failure.role !== "gpu" && failure.address && onNode.length === 0) {
          // An attention node no sequence of the step is on any more (they
          // moved while the step was in flight): send the step again.
          options.log(`step ${stepId}: ${failure.message}; no sequence is there now, re-sending`);
          continue;
        }
        if (onNode.length > 0) {
          // One attention node failed: only the sequences with a shard on it are affected.
          const failed = onNode[0]!.s.shards.find((sh) => sh.node.address === failure.address)!.node;
          const reason = `${nodeName(failed)}: ${failure.message}`;
          if (TRANSIENT.has(failure.code)) {
            options.log(`step ${stepId}: ${reason}; its ${onNode.length} sequence(s) wait for it`);
            const now = Date.now();
            const node = { address: failed.address, role: failed.role };
            for (const p of onNode) p.s.waiting = { since: now, reason, nextTry: now + 100, delay: 100, node };
            failingNodes.add(failed.address);
          } else {
            for (const p of onNode) finish(p.s, "error", reason);
          }
          continue;
        }
        // The pipeline has put the failing gpu-node's address in front.
        const message = failure.message;
        if (
          failure.role === "gpu" &&
          failure.code === Code.FAILED_PRECONDITION &&
          /no model is loaded/.test(message) &&
          (await gpuRetry(message))
        ) {
          await ctx.reloadStage(failure.address).catch((err: unknown) => options.log((err as Error).message));
          continue;
        }
        if (TRANSIENT.has(failure.code) && (await gpuRetry(message))) continue;
        for (const p of alive) finish(p.s, "error", message);
        return rows;
      }
    };
    // Waits before re-sending a step the gpu-node could not run; false when
    // it has been failing for longer than retryTimeoutMs.
    const gpuRetry = async (message: string): Promise<boolean> => {
      gpuFailingSince ??= Date.now();
      if (Date.now() + gpuDelay - gpuFailingSince > options.retryTimeoutMs) return false;
      options.log(`step ${stepId}: ${message}; retrying in ${gpuDelay} ms`);
      await sleep(gpuDelay, signal);
      gpuDelay = Math.min(gpuDelay * 2, 2000);
      return true;
    };

    // One span per prefill step and per `stepEvery`-th decode step (see traceStepEvery).
    const stepEvery = batchSpan ? traceStepEvery() : 1;
    let decodeSteps = 0;
    const tracedStep = (parts: readonly Part[], isDecode: boolean): Promise<Map<Sequence, Float32Array>> => {
      if (!batchSpan) return step(parts, isDecode);
      const n = isDecode ? decodeSteps++ : 0;
      if (isDecode && n % stepEvery !== 0) {
        const unsampled = { ...batchSpan.spanContext(), traceFlags: TraceFlags.NONE };
        return context.with(trace.setSpanContext(context.active(), unsampled), () => step(parts, isDecode));
      }
      const tokens = parts.reduce((t, p) => t + p.tokens.length, 0);
      const attributes = {
        "tessera.step.kind": isDecode ? "decode" : "prefill",
        "tessera.step.decode_index": n,
        "tessera.batch.size": parts.length,
        "tessera.batch.tokens": tokens,
        "tessera.positions.max": Math.max(...parts.map((p) => p.startPos + p.tokens.length)),
        "tessera.gpu.address": ctx.gpu.address,
      };
      return tracer.startActiveSpan(isDecode ? "tessera.decode_step" : "tessera.prefill_step", { attributes }, (span) =>
        endSpanWhen(span, step(parts, isDecode), (rows) =>
          span.setAttributes({
            "tessera.step_id": Number(stepId),
            "tessera.step.sequences_done": rows.size,
            "tessera.wire.bytes_sent": tokens * 4,
            "tessera.wire.bytes_received": rows.size * shape.vocabSize * 4,
          }),
        ),
      );
    };

    const accept = (s: Sequence, logits: Float32Array) => {
      const token = s.sampler!.sample(logits);
      s.firstTokenAt ??= performance.now();
      if (token === model.tokenizer.bos || token === model.tokenizer.eos) return finish(s, "stop");
      s.generated.push(token);
      generatedTotal++;
      recordTokens(1);
      s.completion += s.decoder!.push(token);
      if (s.generated.length >= s.maxTokens) finish(s, "length");
    };

    // 3. Step until every sequence is done: decode for sequences whose
    //    prompt is in, prefill chunks (within the token budget) for the rest.
    for (;;) {
      await admit();
      await revive();
      const unfinished = seqs.filter((s) => !s.finished);
      if (unfinished.length === 0) break;
      const parts: Part[] = [];
      let budget = options.maxPrefillTokens;
      for (const s of unfinished) {
        if (s.waiting || !s.opened) continue;
        const end = prefillEnd(s);
        if (s.fed >= end) {
          parts.push({ s, seqId: s.seqId, startPos: s.fed, tokens: [s.generated[s.generated.length - 1]!] });
        } else if (budget > 0) {
          const n = Math.min(budget, end - s.fed);
          const known = s.generated.length === 0 ? s.promptIds : [...s.promptIds, ...s.generated];
          parts.push({ s, seqId: s.seqId, startPos: s.fed, tokens: known.slice(s.fed, s.fed + n) });
          budget -= n;
        }
      }
      if (parts.length === 0) {
        // Everything left waits: for a failing node's next re-open try, or
        // for capacity that a release in flight is freeing.
        const next = Math.min(...unfinished.map((s) => s.waiting?.nextTry ?? Date.now() + 20));
        await Promise.race([sleep(Math.max(20, next - Date.now()), signal), ...releases]);
        if (signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
        continue;
      }
      const isDecode = parts.every((p) => p.s.fed >= prefillEnd(p.s));
      if (isDecode) decodeStart ??= performance.now();
      const rows = await tracedStep(parts, isDecode);
      for (const p of parts) {
        const row = rows.get(p.s);
        if (!row || p.s.finished || p.s.seqId !== p.seqId) continue;
        const decoding = p.s.fed >= prefillEnd(p.s);
        p.s.fed += p.tokens.length;
        if (decoding) decodeTokens++;
        // Sample once every known token is in: not after a rebuild's chunks.
        if (p.s.fed === p.s.promptIds.length + p.s.generated.length) accept(p.s, row);
      }
      progress();
    }
  } finally {
    place.leave();
    unwatchSlots();
    for (const c of cleanups) c();
    await planning.catch(() => undefined);
    // However the job ends, free every KV cache it opened, and wait for the
    // nodes to confirm (each call is bounded by connectTimeoutMs).
    for (const s of seqs) release(s);
    await Promise.allSettled([...releases]);
  }

  const decodeSeconds = decodeStart === undefined ? 0 : (performance.now() - decodeStart) / 1000;
  const wallSeconds = (performance.now() - t0) / 1000;
  recordJobCost(lastPlan?.pricePerHour ?? 0, wallSeconds, generatedTotal);
  ctx.emit({
    event: {
      case: "summary",
      value: {
        prompts: total,
        errors: seqs.filter((s) => s.finished === "error").length,
        promptTokens: BigInt(promptTokens),
        completionTokens: BigInt(generatedTotal),
        wallSeconds,
        decodeTokensPerSecond: decodeSeconds > 0 ? decodeTokens / decodeSeconds : 0,
        ...(lastPlan ? { plan: lastPlan } : {}),
        decodeBreakdown: {
          steps: breakdown.steps,
          stepSeconds: breakdown.stepSeconds,
          denseSeconds: breakdown.denseSeconds,
          attentionComputeSeconds: breakdown.attentionComputeSeconds,
          attentionWireSeconds: Math.max(0, breakdown.attentionWaitSeconds - breakdown.attentionComputeSeconds),
          coordinatorSeconds: Math.max(0, breakdown.stepSeconds - breakdown.gpuTotalSeconds),
        },
      },
    },
  });
}
