/**
 * Runs one batch of prompts through the cluster: tokenise, place each
 * sequence's KV cache, prefill (chunked by token budget), then decode all
 * active sequences together one token per step, sample as llama2.c's run.c,
 * detokenise and emit results as sequences finish.
 */
import {
  Attention,
  Code,
  KvPlacement,
  RpcError,
  createClient,
  type Client,
  type ForwardResponse,
  type GenerateRequest,
  type MessageInitShape,
  type GenerateEventSchema,
  type ForwardRequestSchema,
  type KvLayoutSchema,
  type SequenceStepSchema,
} from "@tessera/proto";
import {
  createDecoder,
  createSampler,
  tensorF32,
  type CheckpointHeader,
  type Sampler,
  type StreamingDecoder,
  type Tokenizer,
} from "@tessera/core";
import type { ForwardChannel } from "./forward-channel.js";
import type { CompiledCoordinatorOptions } from "./options.js";
import { placeSequences, type AttentionNodeRef } from "./placement.js";

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
  gpu: ForwardChannel;
  /** Attention client of a node address (shared, owned by the coordinator). */
  attentionClient(address: string): Client<typeof Attention>;
  signal: AbortSignal;
  emit(event: MessageInitShape<typeof GenerateEventSchema>): void;
}

type FinishReason = "stop" | "length" | "error";

interface Sequence {
  index: number;
  id: string;
  seqId: string;
  prompt: string;
  promptIds: number[];
  maxTokens: number;
  generated: number[];
  /** Positions whose K/V are written (tokens fed so far). */
  fed: number;
  node?: AttentionNodeRef;
  opened: boolean;
  sampler?: Sampler;
  decoder: StreamingDecoder;
  completion: string;
  finished?: FinishReason;
  error?: string;
  startedAt: number;
  firstTokenAt?: number;
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

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/**
 * Runs `request` to completion. Bad prompts (too long, unplaceable) get an
 * error Result and the rest go on; a node that stays unavailable longer
 * than `retryTimeoutMs` fails the sequences of the step that needed it.
 * @throws RpcError CANCELLED when `ctx.signal` aborts.
 */
export async function runBatch(request: GenerateRequest, ctx: BatchContext): Promise<void> {
  const { model, options, signal } = ctx;
  const { shape } = model.header;
  const t0 = performance.now();
  const sampling = request.sampling;
  const jobId = request.jobId || `job-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const layout: MessageInitShape<typeof KvLayoutSchema> = {
    nLayers: shape.nLayers,
    nHeads: shape.nHeads,
    nKvHeads: shape.nKvHeads,
    headDim: shape.headDim,
  };

  let done = 0;
  let generatedTotal = 0;
  let promptTokens = 0;
  const breakdown: Breakdown = {
    steps: 0,
    stepSeconds: 0,
    denseSeconds: 0,
    attentionComputeSeconds: 0,
    attentionWaitSeconds: 0,
    gpuTotalSeconds: 0,
  };
  let decodeTokens = 0;
  let lastProgress = 0;
  const total = request.prompts.length;

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

  const finish = (s: Sequence, reason: FinishReason, error?: string) => {
    if (s.finished) return;
    s.finished = reason;
    s.error = error;
    s.completion += s.decoder.flush();
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
          kvNode: s.node ? `${s.node.role}@${s.node.address}` : "",
        },
      },
    });
    progress(true);
    release(s);
  };

  // Frees a sequence's KV cache on its attention node, in the background (a
  // failure is logged and affects nothing else).
  const release = (s: Sequence) => {
    if (!s.opened || !s.node) return;
    s.opened = false;
    const node = s.node;
    ctx
      .attentionClient(node.address)
      .closeSequence({ seqId: s.seqId }, { deadline: options.connectTimeoutMs })
      .catch((err: unknown) =>
        options.log(`close ${s.seqId} on ${node.role}-node ${node.address}: ${(err as Error).message}`),
      );
  };

  // 1. Tokenise and check each prompt against the model's context.
  const seqs: Sequence[] = request.prompts.map((p, index) => {
    const promptIds = model.tokenizer.encode(p.prompt, { bos: true, eos: false });
    const wanted = p.maxTokens ?? sampling?.maxTokens ?? 256;
    // As run.c, the last sampled token is never fed back, so a sequence can
    // generate up to seq_len - prompt + 1 tokens.
    const room = shape.seqLen - promptIds.length + 1;
    const s: Sequence = {
      index,
      id: p.id,
      seqId: `${jobId}-${index}`,
      prompt: p.prompt,
      promptIds,
      maxTokens: Math.min(wanted, room),
      generated: [],
      fed: 0,
      opened: false,
      decoder: createDecoder(model.tokenizer, promptIds[promptIds.length - 1]),
      completion: "",
      startedAt: performance.now(),
    };
    promptTokens += promptIds.length;
    if (promptIds.length >= shape.seqLen) {
      finish(
        s,
        "error",
        `prompt "${p.id}" is ${promptIds.length} tokens; the model's context is ${shape.seqLen} positions`,
      );
    } else if (wanted <= 0) {
      finish(s, "length");
    } else {
      const temperature = p.temperature ?? sampling?.temperature ?? 0;
      const topP = p.topP ?? sampling?.topP ?? 0.9;
      // As run.c, a seed of 0 (unset) becomes the clock: xorshift would stay 0.
      const seed = p.seed || sampling?.seed || BigInt(Date.now());
      s.sampler = createSampler({ vocabSize: shape.vocabSize, temperature, topP, seed });
    }
    return s;
  });

  let decodeSeconds = 0;
  try {
    // 2. Place and open each sequence's KV cache.
    const live = seqs.filter((s) => !s.finished);
    const placements = placeSequences(
      live.map((s) => ({
        positions: s.promptIds.length + s.maxTokens - 1,
        kv: request.prompts[s.index]!.kv ?? request.kv ?? KvPlacement.AUTO,
      })),
      { memory: options.memoryNodes, storage: options.storageNodes },
      options.storageThresholdTokens,
    );
    await Promise.all(
      live.map(async (s, i) => {
        const placement = placements[i]!;
        if ("error" in placement) return finish(s, "error", placement.error);
        s.node = placement.node;
        try {
          await ctx
            .attentionClient(s.node.address)
            .openSequence(
              { seqId: s.seqId, layout, maxPositions: s.promptIds.length + s.maxTokens - 1 },
              { deadline: options.connectTimeoutMs, signal },
            );
          s.opened = true;
        } catch (err) {
          finish(s, "error", `${s.node.role}-node ${s.node.address}: ${RpcError.from(err).message}`);
        }
      }),
    );
    progress(true);

    let stepId = 0n;
    // Re-opens the sequences of a step on a node that failed; drops (with an
    // error result) those whose KV cache did not survive.
    const reopen = async (address: string, steps: readonly { s: Sequence; startPos: number }[]) => {
      for (const { s, startPos } of steps) {
        if (s.node?.address !== address || s.finished) continue;
        const res = await ctx
          .attentionClient(address)
          .openSequence(
            { seqId: s.seqId, layout, maxPositions: s.promptIds.length + s.maxTokens - 1 },
            { deadline: 2000, signal },
          );
        if (res.length < startPos) {
          finish(
            s,
            "error",
            `KV cache of ${s.seqId} was lost on ${s.node.role}-node ${address} (has ${res.length} of ${startPos} positions)`,
          );
        }
      }
    };

    // Runs one step (retrying while a node is unavailable) and returns the
    // logits row of each sequence that is still alive.
    const step = async (
      parts: { s: Sequence; startPos: number; tokens: number[] }[],
      isDecode: boolean,
    ): Promise<Map<Sequence, Float32Array> | undefined> => {
      const deadline = Date.now() + options.retryTimeoutMs;
      let delay = 100;
      for (;;) {
        if (signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
        const alive = parts.filter((p) => !p.s.finished);
        if (alive.length === 0) return undefined;
        stepId++;
        const sequences: MessageInitShape<typeof SequenceStepSchema>[] = alive.map((p) => ({
          seqId: p.s.seqId,
          startPos: p.startPos,
          nTokens: p.tokens.length,
          attentionAddress: p.s.node!.address,
        }));
        const req: MessageInitShape<typeof ForwardRequestSchema> & { stepId: bigint } = {
          stepId,
          sequences,
          tokens: alive.flatMap((p) => p.tokens),
        };
        const ts = performance.now();
        let res: ForwardResponse | undefined;
        let failure: { code: number; message: string; address?: string };
        try {
          res = await ctx.gpu.step(req);
          if (!res.error) {
            const logits = tensorF32(res.logits, "logits");
            const vocab = shape.vocabSize;
            const out = new Map<Sequence, Float32Array>();
            alive.forEach((p, i) => out.set(p.s, logits.subarray(i * vocab, (i + 1) * vocab)));
            if (isDecode && res.timings) {
              const t = res.timings;
              breakdown.steps++;
              breakdown.stepSeconds += (performance.now() - ts) / 1000;
              breakdown.denseSeconds += t.denseSeconds;
              breakdown.attentionComputeSeconds += t.attentionComputeSeconds;
              breakdown.attentionWaitSeconds += t.attentionWaitSeconds;
              breakdown.gpuTotalSeconds += t.totalSeconds;
            }
            return out;
          }
          failure = { code: res.error.code, message: res.error.message, address: res.error.address || undefined };
        } catch (err) {
          const e = RpcError.from(err);
          failure = { code: Code.UNAVAILABLE, message: e.message };
        }
        const retryable = failure.code === Code.UNAVAILABLE || failure.code === Code.DEADLINE_EXCEEDED;
        if (!retryable || Date.now() + delay > deadline) {
          for (const p of alive) finish(p.s, "error", failure.message);
          return undefined;
        }
        options.log(`step ${stepId}: ${failure.message}; retrying in ${delay} ms`);
        await sleep(delay, signal);
        delay = Math.min(delay * 2, 2000);
        if (failure.address) {
          try {
            await reopen(failure.address, alive);
          } catch {
            // Still down: the next attempt reports it again.
          }
        }
      }
    };

    const accept = (s: Sequence, logits: Float32Array) => {
      const token = s.sampler!.sample(logits);
      s.firstTokenAt ??= performance.now();
      if (token === model.tokenizer.bos || token === model.tokenizer.eos) return finish(s, "stop");
      s.generated.push(token);
      generatedTotal++;
      s.completion += s.decoder.push(token);
      if (s.generated.length >= s.maxTokens) finish(s, "length");
    };

    // 3. Prefill, in steps of at most maxPrefillTokens tokens; a long prompt
    //    is split across steps (its logits are used once it is fully fed).
    for (;;) {
      const parts: { s: Sequence; startPos: number; tokens: number[] }[] = [];
      let budget = options.maxPrefillTokens;
      for (const s of seqs) {
        if (s.finished || s.fed >= s.promptIds.length || budget === 0) continue;
        const n = Math.min(budget, s.promptIds.length - s.fed);
        parts.push({ s, startPos: s.fed, tokens: s.promptIds.slice(s.fed, s.fed + n) });
        budget -= n;
      }
      if (parts.length === 0) break;
      const rows = await step(parts, false);
      for (const p of parts) {
        if (p.s.finished) continue;
        p.s.fed += p.tokens.length;
        if (p.s.fed === p.s.promptIds.length) accept(p.s, rows!.get(p.s)!);
      }
      progress();
    }

    // 4. Decode every live sequence together, one token per step.
    const decodeStart = performance.now();
    for (;;) {
      const parts = seqs
        .filter((s) => !s.finished)
        .map((s) => ({ s, startPos: s.fed, tokens: [s.generated[s.generated.length - 1]!] }));
      if (parts.length === 0) break;
      const rows = await step(parts, true);
      for (const p of parts) {
        if (p.s.finished) continue;
        p.s.fed += 1;
        decodeTokens++;
        accept(p.s, rows!.get(p.s)!);
      }
      progress();
    }
    decodeSeconds = (performance.now() - decodeStart) / 1000;
  } finally {
    // A job that is cancelled or fails half-way still frees every KV cache it opened.
    for (const s of seqs) release(s);
  }

  const wall = (performance.now() - t0) / 1000;
  ctx.emit({
    event: {
      case: "summary",
      value: {
        prompts: total,
        errors: seqs.filter((s) => s.finished === "error").length,
        promptTokens: BigInt(promptTokens),
        completionTokens: BigInt(generatedTotal),
        wallSeconds: wall,
        decodeTokensPerSecond: decodeSeconds > 0 ? decodeTokens / decodeSeconds : 0,
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
