/**
 * One prompt of a batch as the engine runs it: its tokens, where its KV
 * cache is (shards), and an explicit state with every transition in this
 * file (as vLLM v1's `RequestStatus`, vllm/v1/request.py):
 *
 * | from             | to               | by                                        |
 * | ---------------- | ---------------- | ----------------------------------------- |
 * | waiting, moving  | opening          | {@link startOpening} (admitted)           |
 * | opening          | running          | {@link opened}                            |
 * | opening          | waiting          | {@link backToWaiting} (no answer, no room) |
 * | running          | waiting-for-node | {@link waitForNode} (its node failed)     |
 * | waiting-for-node | running          | {@link revived}                           |
 * | any but finished | moving           | {@link startMoving} (node or KV lost)     |
 * | any but finished | finished         | {@link finished}                          |
 *
 * A transition from a state it does not leave throws (a bug in the engine,
 * not a node's failure).
 */
import type { Sampler, StreamingDecoder } from "@tessera/model";
import type { ShardPlacement } from "../placement.js";

/** Where a sequence is in its life (see the file comment). */
export enum SequenceState {
  /** Queued for admission into the running batch (no KV cache anywhere). */
  Waiting = "waiting",
  /** Its shards' OpenSequence calls are in flight. */
  Opening = "opening",
  /** Every shard is open: it takes part in steps. */
  Running = "running",
  /** Its attention node failed a step: it waits to re-open there (its KV cache may have survived). */
  WaitingForNode = "waiting-for-node",
  /** Moved off its node: queued to be placed elsewhere, its KV cache rebuilt there by prefill. */
  Moving = "moving",
  /** Done (stop, length or error); its Result was emitted. */
  Finished = "finished",
}

/** Why a sequence finished, as the Result's `finish_reason`. */
export type FinishReason = "stop" | "length" | "error";

/** One KV-head group of a sequence on its attention node, known there as `seqId`. */
export interface Shard extends ShardPlacement {
  seqId: string;
  opened: boolean;
  /** Bytes its node reserved for it (OpenSequence's reserved_bytes), once opened. */
  reservedBytes?: number;
}

/** Its attention node failing: since when (running ms: BatchContext.runningNow), why, when to re-open next, and the node. */
export interface NodeWait {
  since: number;
  reason: string;
  nextTry: number;
  delay: number;
  node: { address: string; role: string };
}

/** Opening its KV cache failing because the node does not answer: since when, why, when to try again (running ms: BatchContext.runningNow). */
export interface OpenRetry {
  since: number;
  reason: string;
  notBefore: number;
  delay: number;
  tries: number;
}

/** One prompt of the batch (see the file comment for its states). */
export interface Sequence {
  /** Its index in the request's prompts. */
  readonly index: number;
  /** The prompt's id (the Result's). */
  readonly id: string;
  /** The id its KV cache is known by on its attention nodes (and to the gpu-nodes); a new one per move. */
  seqId: string;
  state: SequenceState;
  /** Times its KV cache moved to other nodes. */
  moves: number;
  /** Times its own KV cache failed on a node (NodeError.seq_id named it) and it was rebuilt. */
  kvFaults?: number;
  /** In state Moving: since when (running ms: BatchContext.runningNow) and why it has no node. */
  homeless?: { since: number; reason: string };
  /** Set while opening its KV cache fails because the node does not answer (killed, restarting). */
  openRetry?: OpenRetry;
  /** In state WaitingForNode: its failing node and the re-open schedule. */
  waiting?: NodeWait;
  prompt: string;
  promptIds: number[];
  maxTokens: number;
  generated: number[];
  /** Positions whose K/V are written (tokens fed so far). */
  fed: number;
  /** Where its KV heads are (one shard of all heads when unsplit); empty until placed. */
  shards: Shard[];
  sampler?: Sampler;
  decoder?: StreamingDecoder;
  completion: string;
  finished?: FinishReason;
  /** performance.now() at creation and at its first sampled token. */
  startedAt: number;
  firstTokenAt?: number;
  /** performance.now() when first admitted into the running batch, and at its last completion token (serving metrics). */
  admittedAt?: number;
  lastTokenAt?: number;
}

/** The seq-id of prompt `index` of a job: `${jobId}-${nonce}-${index}` (the nonce keeps retried jobs apart). */
export function sequenceId(jobId: string, nonce: string, index: number): string {
  return `${jobId}-${nonce}-${index}`;
}

/** The seq-id after `moves` moves: `${jobId}-${nonce}-${index}~${moves}`. */
export function movedSequenceId(jobId: string, nonce: string, index: number, moves: number): string {
  return `${sequenceId(jobId, nonce, index)}~${moves}`;
}

/** The seq-id of the `tries`-th open retry: `${jobId}-${nonce}-${index}~${moves}.${tries}`. */
export function retriedSequenceId(jobId: string, nonce: string, index: number, moves: number, tries: number): string {
  return `${movedSequenceId(jobId, nonce, index, moves)}.${tries}`;
}

/** A shard's seq-id on its node: the sequence's own when unsplit, else `<seq>#h<start>-<end>`. */
export function shardSequenceId(seqId: string, groups: number, p: ShardPlacement): string {
  return groups === 1 ? seqId : `${seqId}#h${p.kvHeadStart}-${p.kvHeadEnd}`;
}

/** A new sequence of prompt `index`, state Waiting, not yet tokenised. */
export function createSequence(index: number, id: string, prompt: string, seqId: string): Sequence {
  return {
    index,
    id,
    seqId,
    state: SequenceState.Waiting,
    moves: 0,
    prompt,
    promptIds: [],
    maxTokens: 0,
    generated: [],
    fed: 0,
    shards: [],
    completion: "",
    startedAt: performance.now(),
  };
}

const ANY_LIVE = [
  SequenceState.Waiting,
  SequenceState.Opening,
  SequenceState.Running,
  SequenceState.WaitingForNode,
  SequenceState.Moving,
] as const;

function enter(s: Sequence, to: SequenceState, from: readonly SequenceState[]): void {
  if (!from.includes(s.state)) throw new Error(`sequence ${s.seqId}: cannot go from ${s.state} to ${to}`);
  s.state = to;
}

/** Whether every shard is open (Running, or WaitingForNode: its shards stay open on the failing node). */
export function isOpen(s: Sequence): boolean {
  return s.state === SequenceState.Running || s.state === SequenceState.WaitingForNode;
}

/** Whether it is still to be admitted (Waiting or Moving). */
export function isQueued(s: Sequence): boolean {
  return s.state === SequenceState.Waiting || s.state === SequenceState.Moving;
}

/** Waiting/Moving → Opening: placed on `shards` (not yet open); it has a node again. */
export function startOpening(s: Sequence, shards: Shard[]): void {
  enter(s, SequenceState.Opening, [SequenceState.Waiting, SequenceState.Moving]);
  s.homeless = undefined;
  s.shards = shards;
}

/** Opening → Running: every shard opened. */
export function opened(s: Sequence): void {
  enter(s, SequenceState.Running, [SequenceState.Opening]);
  s.openRetry = undefined;
}

/**
 * Opening → Waiting: its node did not answer (`retry`: tried again after a
 * backoff, under a new seq-id) or refused it for room (tried once capacity
 * frees); its shards are dropped.
 */
export function backToWaiting(s: Sequence, seqId?: string): void {
  enter(s, SequenceState.Waiting, [SequenceState.Opening]);
  s.shards = [];
  if (seqId !== undefined) s.seqId = seqId;
}

/** Running → WaitingForNode: its attention node failed a step with a transient error. */
export function waitForNode(s: Sequence, wait: NodeWait): void {
  enter(s, SequenceState.WaitingForNode, [SequenceState.Running]);
  s.waiting = wait;
}

/** WaitingForNode → Running: re-opened on its node, its KV cache intact. */
export function revived(s: Sequence): void {
  enter(s, SequenceState.Running, [SequenceState.WaitingForNode]);
  s.waiting = undefined;
}

/**
 * Any live state → Moving: off its nodes, to be placed again under
 * `${jobId}-${nonce}-${index}~${moves}` and rebuilt there by prefilling
 * prompt + tokens so far (its sampler and tokens kept). The caller closes
 * the old shards first.
 */
export function startMoving(s: Sequence, jobId: string, nonce: string, reason: string, since: number): void {
  enter(s, SequenceState.Moving, ANY_LIVE);
  s.shards = [];
  s.waiting = undefined;
  s.fed = 0;
  s.moves++;
  s.seqId = movedSequenceId(jobId, nonce, s.index, s.moves);
  s.homeless = { since, reason };
}

/** Any live state → Finished with `reason`; false when it had finished already. */
export function finished(s: Sequence, reason: FinishReason): boolean {
  if (s.state === SequenceState.Finished) return false;
  enter(s, SequenceState.Finished, ANY_LIVE);
  s.finished = reason;
  s.waiting = undefined;
  return true;
}

/** Positions its KV cache may hold: prompt + max tokens - 1 (the last token is never fed). */
export function maxPositions(s: Sequence): number {
  return s.promptIds.length + s.maxTokens - 1;
}

/**
 * Positions fed by prefill: the prompt, and after a move every generated
 * token but the last (which the next decode step feeds, as before).
 */
export function prefillEnd(s: Sequence): number {
  return s.promptIds.length + Math.max(0, s.generated.length - 1);
}

/** "memory@host:port,storage@host:port": its shards' nodes (the Result's kv_node). */
export function kvNodes(s: Sequence): string {
  return s.shards.map((sh) => `${sh.node.role}@${sh.node.address}`).join(",");
}
