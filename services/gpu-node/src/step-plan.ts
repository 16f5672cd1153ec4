/**
 * The step plan of a gpu-node (pure: no I/O, no onnxruntime): a
 * ForwardRequest validated against the loaded model's shape and layer range,
 * its sequences placed as rows of the batch, their KV-head shards, the
 * logits rows each sequence asks for (SequenceStep.n_logit_rows), and the
 * split into micro-batches with one Attend call per (attention node, KV-head
 * range) each. Every validation failure is a {@link StepError}
 * INVALID_ARGUMENT with reason INVALID_REQUEST naming the bad field.
 */
import { tensorF32, type ModelShape } from "@tessera/core";
import type { ForwardRequest } from "@tessera/proto";
import { invalidStep, type StepError } from "./step-error.js";

/** What planning needs of the loaded model (a DenseModel satisfies it). */
export interface StepModel {
  readonly shape: Pick<ModelShape, "seqLen" | "dim" | "nKvHeads" | "vocabSize">;
  /** Layers [layerStart, layerEnd) run here. */
  readonly layerStart: number;
  readonly layerEnd: number;
  /** Whether this stage embeds token ids (the first stage). */
  readonly embeds: boolean;
  /** Whether this stage applies the head (the last stage). */
  readonly hasHead: boolean;
}

/** A KV-head group [kvHeadStart, kvHeadEnd) of a sequence, held by the attention node at `address` as `seqId`. */
export interface PlannedShard {
  address: string;
  seqId: string;
  kvHeadStart: number;
  kvHeadEnd: number;
}

/** One sequence of a step and its rows in the batch (or micro-batch). */
export interface PlannedSequence {
  seqId: string;
  startPos: number;
  nTokens: number;
  row0: number;
  /** Rows of logits it gets (its last `logitRows` new positions): max(1, n_logit_rows), at most n_tokens. */
  logitRows: number;
  /** Where its KV heads are: one shard of all heads when unsplit; none on a stage without layers. */
  shards: PlannedShard[];
}

/**
 * One Attend call of a micro-batch per layer: the sequences (or their
 * shards) that one attention node holds for one KV-head range.
 */
export interface PlannedNode {
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

/** A validated step: its rows, sequences and input hidden states. */
export interface StepPlan {
  totalTokens: number;
  /** Rows of the step's logits: the sum of its sequences' `logitRows`. */
  logitRows: number;
  sequences: PlannedSequence[];
  /** [total_tokens, dim] f32 input hidden states (decoded when they came as f16); undefined when this node embeds. */
  hidden: Float32Array | undefined;
}

/** Consecutive sequences of a step, run through the layers together. */
export interface MicroBatch {
  /** Index of its first sequence in the step. */
  seq0: number;
  /** Its first row in the step's batch. */
  row0: number;
  rows: number;
  /** Its first row of the step's logits. */
  logitRow0: number;
  /** Its rows of logits (the sum of its sequences' `logitRows`). */
  logitRows: number;
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
export function splitMicroBatches(sequences: readonly PlannedSequence[], k: number): MicroBatch[] {
  const n = sequences.length;
  const groups = Math.min(k, n);
  const total = sequences.reduce((a, s) => a + s.nTokens, 0);
  const batches: MicroBatch[] = [];
  let i = 0;
  let cum = 0;
  let logitRow0 = 0;
  for (let g = 0; g < groups; g++) {
    const first = i;
    const target = (total * (g + 1)) / groups;
    cum += sequences[i++]!.nTokens;
    while (n - i > groups - g - 1 && cum + sequences[i]!.nTokens / 2 <= target) cum += sequences[i++]!.nTokens;
    const mb = planMicroBatch(sequences.slice(first, i), first, logitRow0);
    logitRow0 += mb.logitRows;
    batches.push(mb);
  }
  return batches;
}

/**
 * A micro-batch of `sequences` (consecutive in the step, the first at index
 * `seq0`, its first logits row at `logitRow0`).
 */
export function planMicroBatch(sequences: readonly PlannedSequence[], seq0: number, logitRow0 = seq0): MicroBatch {
  const row0 = sequences[0]!.row0;
  const nodes = new Map<string, PlannedNode>();
  const local: PlannedSequence[] = [];
  let row = 0;
  let logitRows = 0;
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
    logitRows += s.logitRows;
  }
  for (const node of nodes.values()) node.contiguous = node.rowRanges.length === 1;
  return { seq0, row0, rows: row, logitRow0, logitRows, sequences: local, nodes: [...nodes.values()] };
}

/**
 * Validates a ForwardRequest against the model and places its sequences'
 * rows in the batch; `self` is this node's address (named in errors).
 * @throws StepError INVALID_ARGUMENT (reason INVALID_REQUEST) naming the bad field.
 */
export function planStep(req: ForwardRequest, model: StepModel, self: string): StepPlan {
  const bad = (msg: string) => invalidStep(req.stepId, self, msg);
  const { seqLen, nKvHeads } = model.shape;
  if (req.sequences.length === 0) throw bad("no sequences");
  const sequences: PlannedSequence[] = [];
  const seen = new Set<string>();
  const seenShards = new Set<string>();
  let row = 0;
  let logitRows = 0;
  const hasLayers = model.layerEnd > model.layerStart;
  for (const s of req.sequences) {
    const name = `sequence ${JSON.stringify(s.seqId)}`;
    if (seen.has(s.seqId)) throw bad(`${name} appears twice`);
    seen.add(s.seqId);
    if (s.nTokens < 1) throw bad(`${name} has n_tokens 0`);
    if (s.startPos + s.nTokens > seqLen) {
      throw bad(`${name}: positions [${s.startPos}, ${s.startPos + s.nTokens}) exceed the model's seq_len ${seqLen}`);
    }
    if (s.nLogitRows > s.nTokens) throw bad(`${name}: n_logit_rows ${s.nLogitRows} exceeds its n_tokens ${s.nTokens}`);
    const shards = hasLayers ? planShards(s, nKvHeads, bad) : [];
    for (const sh of shards) {
      const key = `${sh.address} ${sh.seqId}`;
      if (seenShards.has(key))
        throw bad(`attention node ${sh.address} is sent sequence ${JSON.stringify(sh.seqId)} twice`);
      seenShards.add(key);
    }
    const rows = Math.max(1, s.nLogitRows);
    sequences.push({ seqId: s.seqId, startPos: s.startPos, nTokens: s.nTokens, row0: row, logitRows: rows, shards });
    row += s.nTokens;
    logitRows += rows;
  }
  return { totalTokens: row, logitRows, sequences, hidden: planInput(req, model, row, bad) };
}

/**
 * Checks the step's input against the model: token ids in the vocabulary
 * (a stage that embeds), else hidden states of shape [rows, dim], decoded to
 * f32 (returned).
 * @throws what `bad` makes naming the field.
 */
function planInput(
  req: ForwardRequest,
  model: StepModel,
  rows: number,
  bad: (msg: string) => StepError,
): Float32Array | undefined {
  if (model.embeds) {
    if (req.tokens.length !== rows) throw bad(`${req.tokens.length} tokens for ${rows} new positions`);
    const vocab = model.shape.vocabSize;
    req.tokens.forEach((t, i) => {
      if (!(t >= 0 && t < vocab)) throw bad(`token ${t} at index ${i} is outside the vocabulary [0, ${vocab})`);
    });
    return undefined;
  }
  const h = req.hidden;
  if (!h) throw bad("hidden is missing (this node does not embed tokens)");
  const { dim } = model.shape;
  if (h.shape.length !== 2 || h.shape[0] !== rows || h.shape[1] !== dim) {
    throw bad(`hidden has shape [${h.shape.join(", ")}], expected [${rows}, ${dim}]`);
  }
  try {
    return tensorF32(h, "hidden");
  } catch (err) {
    throw bad((err as Error).message);
  }
}

/**
 * The shards of one SequenceStep: `attention_address` alone is one shard of
 * all KV heads under the sequence's own id; `shards` must be in order,
 * non-empty, and cover [0, n_kv_heads) without gaps, each with an address
 * and a seq_id.
 * @throws what `bad` makes (INVALID_ARGUMENT) naming the sequence and field.
 */
export function planShards(
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
 * Validates ForwardRequest.next_stages against this stage: none after the
 * stage that applies the head, no empty address, and next_stage_models
 * empty or one per next stage.
 * @throws StepError INVALID_ARGUMENT (reason INVALID_REQUEST) naming the field.
 */
export function checkNextStages(req: ForwardRequest, model: Pick<StepModel, "hasHead">, self: string): void {
  const bad = (msg: string) => invalidStep(req.stepId, self, msg);
  const models = req.nextStageModels.length;
  if (models !== 0 && models !== req.nextStages.length)
    throw bad(`next_stage_models has ${models} entries for ${req.nextStages.length} next_stages`);
  if (req.nextStages.length === 0) return;
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
export function isAddress(address: string): boolean {
  return /^[\x21-\x7e]+$/.test(address);
}
