/**
 * Several gpu-nodes as pipeline stages: each runs a contiguous layer range,
 * the first embeds token ids, the last applies the final norm and
 * classifier, and the hidden states [total_tokens, dim] of a step pass from
 * stage to stage directly, gpu-node to gpu-node (ForwardRequest.next_stages):
 * the coordinator sends token ids to the first stage and gets logits back
 * from it, and no hidden state passes through it.
 */
import {
  StageModelSchema,
  create,
  type ForwardRequest,
  type ForwardRequestSchema,
  type ForwardResponse,
  type MessageInitShape,
} from "@tessera/proto";
import type { ForwardChannel } from "./forward-channel.js";

/** A layer range [start, end) of one pipeline stage. */
export interface LayerRange {
  start: number;
  end: number;
}

/**
 * Splits `nLayers` into `nStages` contiguous ranges as even as possible
 * (the first `nLayers % nStages` stages get one more layer). Stages beyond
 * the number of layers get no range: at most `nLayers` stages are used.
 * @throws RangeError when nStages < 1.
 */
export function splitLayers(nLayers: number, nStages: number): LayerRange[] {
  if (!(nStages >= 1)) throw new RangeError(`splitLayers: need at least one stage, got ${nStages}`);
  const n = Math.min(nStages, nLayers);
  const base = Math.floor(nLayers / n);
  const extra = nLayers % n;
  const out: LayerRange[] = [];
  let start = 0;
  for (let i = 0; i < n; i++) {
    const end = start + base + (i < extra ? 1 : 0);
    out.push({ start, end });
    start = end;
  }
  return out;
}

/** What a step was planned for on one stage: the model id its Load answered and its layer range. */
export interface StageModel {
  modelId: string;
  layerStart: number;
  layerEnd: number;
}

/**
 * One step through every stage in order: sent to the first stage with the
 * other stages' addresses as `next_stages`; each stage hands its hidden
 * states to the next and the first answers with the last one's response.
 * Only the first stage's channel opens a stream; the others' serve for
 * their addresses.
 */
export class ForwardPipeline {
  /**
   * @param stages the stages' channels, in order
   * @param models what each stage must hold, in the same order (read at
   *   each step, so a reload's new model id counts); each step names them
   *   (ForwardRequest.model, next_stage_models). Empty: steps name none.
   */
  constructor(
    readonly stages: readonly ForwardChannel[],
    private readonly models: readonly StageModel[] = [],
  ) {
    if (stages.length === 0) throw new RangeError("ForwardPipeline: no stages");
    if (models.length !== 0 && models.length !== stages.length)
      throw new RangeError(`ForwardPipeline: ${models.length} stage models for ${stages.length} stages`);
  }

  /** The stages' addresses, for messages. */
  get address(): string {
    return this.stages.map((s) => s.address).join(" -> ");
  }

  /**
   * Sends `request` (with token ids) through the stages; resolves with the
   * last stage's response: logits, the stages' timings (dense and attention
   * summed over stages, total the first stage's wall time; per stage in
   * `stageTimings`), or the step's `error`. A gpu-node's error (not an
   * attention node's) gets "gpu-node <address>: " in front, naming the
   * stage that failed (from the error's address, which a stage that could
   * not reach the next one sets to that one's), unless the message already
   * starts with it.
   * @throws NodeUnreachableError("gpu", address) of the first stage when its
   *   stream broke (a later stage that breaks comes back as `error`,
   *   UNAVAILABLE, naming it); RpcError CANCELLED when `signal` aborts (the
   *   step's answer is then dropped).
   */
  async step(
    request: MessageInitShape<typeof ForwardRequestSchema> & Pick<ForwardRequest, "stepId">,
    signal?: AbortSignal,
  ): Promise<ForwardResponse> {
    const [first, ...rest] = this.stages as [ForwardChannel, ...ForwardChannel[]];
    const [model, ...nextStageModels] = this.models.map((m) => create(StageModelSchema, m));
    const res = await first.step(
      { ...request, nextStages: rest.map((s) => s.address), ...(model ? { model, nextStageModels } : {}) },
      signal,
    );
    const e = res.error;
    if (e && e.role !== "attention") {
      const address = e.address || first.address;
      if (!namesGpuNode(e.message, address)) e.message = `gpu-node ${address}: ${e.message}`;
    }
    return res;
  }

  /** Ends every stage's stream. Idempotent. */
  close(): void {
    for (const s of this.stages) s.close();
  }
}

/**
 * Whether `message` already starts by naming the gpu-node at `address`
 * ("gpu-node <address>" or "gpu-node at <address>", then ":", a space or
 * the end), so that "gpu-node a:10 ..." does not count as naming "a:1".
 */
function namesGpuNode(message: string, address: string): boolean {
  for (const prefix of [`gpu-node ${address}`, `gpu-node at ${address}`]) {
    if (!message.startsWith(prefix)) continue;
    const next = message.charAt(prefix.length);
    if (next === "" || next === ":" || next === " ") return true;
  }
  return false;
}
