/**
 * Several gpu-nodes as pipeline stages: each runs a contiguous layer range,
 * the first embeds token ids, the last applies the final norm and
 * classifier, and the hidden states [total_tokens, dim] of a step pass from
 * stage to stage. For now the coordinator relays them (one extra hop per
 * stage); gpu-node to gpu-node streams are later work.
 */
import type { ForwardRequest, ForwardRequestSchema, ForwardResponse, MessageInitShape } from "@tessera/proto";
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

/**
 * One step through every stage in order. A stage's failure comes back as
 * the step's `error`; gpu-node errors (not an attention node's) get the
 * stage's address in front, so the caller can name the node.
 */
export class ForwardPipeline {
  constructor(readonly stages: readonly ForwardChannel[]) {}

  /** The stages' addresses, for messages. */
  get address(): string {
    return this.stages.map((s) => s.address).join(" -> ");
  }

  /**
   * Sends `request` (with token ids) to the first stage and each stage's
   * hidden states to the next; resolves with the last stage's response
   * (logits) and the stages' timings summed.
   * @throws NodeUnreachableError("gpu", address) of the stage whose stream broke.
   */
  async step(
    request: MessageInitShape<typeof ForwardRequestSchema> & Pick<ForwardRequest, "stepId">,
  ): Promise<ForwardResponse> {
    let res: ForwardResponse | undefined;
    const timings = { denseSeconds: 0, attentionWaitSeconds: 0, attentionComputeSeconds: 0, totalSeconds: 0 };
    for (const [i, stage] of this.stages.entries()) {
      const req = i === 0 ? request : { stepId: request.stepId, sequences: request.sequences, hidden: res!.hidden };
      res = await stage.step(req);
      if (res.error) {
        if (res.error.role !== "attention") res.error.message = `gpu-node ${stage.address}: ${res.error.message}`;
        return res;
      }
      const t = res.timings;
      if (t) {
        timings.denseSeconds += t.denseSeconds;
        timings.attentionWaitSeconds += t.attentionWaitSeconds;
        timings.attentionComputeSeconds += t.attentionComputeSeconds;
        timings.totalSeconds += t.totalSeconds;
      }
    }
    if (res!.timings) Object.assign(res!.timings, timings);
    return res!;
  }

  /** Ends every stage's stream. Idempotent. */
  close(): void {
    for (const s of this.stages) s.close();
  }
}
