/**
 * The schedule phase (vLLM v1's `Scheduler.schedule()`): decides which
 * sequences run and what each feeds in the next step.
 *
 * - admit: continuous batching. Sequences join the running batch (the
 *   coordinator's {@link BatchSlots}, shared with its other jobs) in input
 *   order while it holds fewer than `maxBatchSequences` and their attention
 *   node has room; one refused for capacity waits until a running sequence
 *   is released (the job is "blocked"), and fails only when nothing else
 *   holds capacity.
 * - open: OpenSequence on every shard; a node that does not answer is tried
 *   again after a backoff, under a new seq-id.
 * - revive: a sequence whose node failed is re-opened there (with backoff)
 *   and its KV cache checked (a storage-node keeps it across a restart, a
 *   memory-node not); failing too long marks the node lost.
 * - re-plan and move: a node lost, removed or found without a sequence's KV
 *   cache moves its sequences elsewhere ({@link JobPlanner} plans again).
 * - rebuild: a sequence whose own KV cache failed (a node names it in
 *   NodeError.seq_id: damaged files, a checksum, a full disk; or its
 *   re-open finds its files damaged, DATA_LOSS) is moved alone, at once,
 *   with a log line, and rebuilt from its tokens; placement then avoids a
 *   node whose disk was full (here, or at OpenSequence: RESOURCE_EXHAUSTED
 *   with reason DISK_FULL) while another of its role is up. After
 *   {@link MAX_KV_FAULTS} rebuilds it fails with the node's message.
 * - plan: per ready sequence its next prompt chunk (prefill, at most
 *   `maxPrefillTokens` tokens per step over the batch) or its last sampled
 *   token (decode), as a {@link StepPlan}.
 */
import { Code, NodeErrorReason, RpcError, type NodeError } from "@tessera/proto";
import type { BatchSlotsMember } from "../batch-slots.js";
import type { MembershipChange } from "../membership.js";
import { watchSlots } from "../metrics.js";
import { kvRole, placeSequences, type AttentionNodeRef, type Placement, type ShardPlacement } from "../placement.js";
import { kvOf, nodeName, runningMsOf, sleep, type BatchJob } from "./context.js";
import { TRANSIENT } from "./executor.js";
import { KvCaches } from "./kv-caches.js";
import type { Output } from "./output.js";
import { describePrice, JobPlanner } from "./replan.js";
import {
  SequenceState,
  backToWaiting,
  isOpen,
  maxPositions,
  opened,
  prefillEnd,
  retriedSequenceId,
  revived,
  shardSequenceId,
  startMoving,
  startOpening,
  waitForNode,
  type Sequence,
  type Shard,
} from "./sequence.js";
import type { StepPart, StepPlan } from "./step-plan.js";

/** Rebuilds of one sequence after its own KV cache failed before it fails instead. */
export const MAX_KV_FAULTS = 3;

/** What opening a sequence's shards gave: opened, moved meanwhile, retry later, or refused for room (the message). */
type OpenResult = undefined | "moved" | "retry" | { refused: string };

/** One job's scheduler (see the file comment). */
export class Scheduler {
  readonly kv: KvCaches;
  readonly planner: JobPlanner;
  /** Sequences to admit (Waiting or Moving), in input order. */
  private readonly pending: Sequence[] = [];
  /** Attention nodes whose calls failed in a step and have not answered since. */
  private readonly failingNodes = new Set<string>();
  /** Attention nodes that reported a full disk (DISK_FULL): placed on only when no other node of the role is up. */
  private readonly fullDisks = new Set<string>();
  /** A sequence was refused for KV capacity: none is admitted until capacity frees. */
  private blocked = false;
  /** ctx.slots.freed when `blocked` was set: another job freeing places (and KV capacity) unblocks this one too. */
  private blockedAt = 0;
  private output!: Output;
  private place!: BatchSlotsMember;
  private unsubscribe: (() => void) | undefined;
  private unwatchSlots: (() => void) | undefined;

  constructor(private readonly job: BatchJob) {
    this.kv = new KvCaches(job, () => (this.blocked = false));
    this.planner = new JobPlanner(job, () => (this.blocked = false));
  }

  /**
   * Takes the job's place in the running batch (finishing through
   * `output`) and queues every sequence its prompts did not finish already.
   */
  start(output: Output): void {
    this.output = output;
    this.pending.push(...this.job.seqs.filter((s) => !s.finished));
    this.place = this.job.ctx.slots.join(this.job.request.priority);
    this.unwatchSlots = watchSlots(this.job.ctx.slots);
  }

  /** Follows membership changes from now on (after the job-start plan): see onChange. */
  followMembership(): void {
    this.unsubscribe = this.job.ctx.membership.subscribe((c) => this.onChange(c));
  }

  /** Leaves the running batch and stops following membership; waits for the re-plans queued. */
  async stop(): Promise<void> {
    this.place.leave();
    this.unwatchSlots?.();
    this.unsubscribe?.();
    await this.planner.settled();
  }

  /**
   * The clock of the retry windows and backoffs (homeless, openRetry and
   * waiting times): the coordinator's running time, in ms (BatchContext.runningNow).
   */
  private now(): number {
    return runningMsOf(this.job.ctx);
  }

  private running(): Sequence[] {
    return this.job.seqs.filter(isOpen);
  }

  /**
   * Moves a sequence off its attention nodes: its KV cache is closed where
   * it can be and rebuilt wherever placement puts it next (prompt + tokens
   * so far, prefilled under a new id), its sampler and tokens kept.
   */
  move(s: Sequence, reason: string, since = this.now()): void {
    if (s.finished) return;
    this.kv.release(s);
    startMoving(s, this.job.jobId, this.job.nonce, reason, since);
    if (!this.pending.includes(s)) {
      this.pending.push(s);
      this.pending.sort((a, b) => a.index - b.index);
    }
  }

  /**
   * Re-plans after a change of the cluster: sequences on a node that left
   * or was lost move; a node that joined or came back takes newcomers.
   */
  private onChange(c: MembershipChange): void {
    if (c.role === "gpu") return; // the pipeline is fixed for the job (issue 5 re-plans gpu-nodes)
    let moved = 0;
    if (c.kind === "left" || c.kind === "lost") {
      this.failingNodes.delete(c.address);
      for (const s of this.job.seqs) {
        if (s.finished || !s.shards.some((sh) => sh.node.address === c.address)) continue;
        this.move(s, s.waiting?.reason ?? `${c.role}-node ${c.address}: ${c.reason}`, s.waiting?.since);
        moved++;
      }
    }
    this.blocked = false; // room may have appeared (or sequences moved)
    void this.planner.replan(
      `${c.role}-node ${c.address} ${c.kind}${c.kind === "lost" ? ` (${c.reason})` : ""}`,
      moved,
    );
  }

  /**
   * Admits waiting sequences into the running batch as places and KV capacity allow (see the file comment).
   * @throws RpcError CANCELLED when the job is cancelled.
   */
  async admit(): Promise<void> {
    const { ctx } = this.job;
    const { options, membership } = ctx;
    for (;;) {
      // A cancelled job opens nothing more (each open would only be
      // cancelled and finish its sequence with an error).
      if (ctx.signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
      // A sequence finished while it waited here (given up, failed) is not admitted.
      for (const s of this.pending.filter((p) => p.finished)) this.pending.splice(this.pending.indexOf(s), 1);
      // A moved sequence with no node of its role up waits for one (a
      // node back or added) until retryTimeoutMs after it lost its node,
      // without holding up the sequences behind it.
      const now = this.now();
      const lists = {
        memory: this.withRoom(membership.up("memory")),
        storage: this.withRoom(membership.up("storage")),
      };
      const roleOf = (s: Sequence) =>
        kvRole({ positions: maxPositions(s), kv: kvOf(this.job, s) }, lists, options.storageThresholdTokens);
      const stuck = (s: Sequence) => s.homeless !== undefined && lists[roleOf(s)].length === 0;
      for (const s of this.pending.filter((p) => stuck(p) && now - p.homeless!.since > options.retryTimeoutMs)) {
        this.pending.splice(this.pending.indexOf(s), 1);
        const gaveUp = `gave up after ${Math.round((now - s.homeless!.since) / 1000)} s: no ${roleOf(s)}-node up`;
        this.output.finish(s, "error", `${s.homeless!.reason} (${gaveUp})`);
      }
      if (this.blocked && ctx.slots.freed !== this.blockedAt) this.blocked = false;
      const ready = this.pending.filter((p) => !stuck(p) && !(p.openRetry && p.openRetry.notBefore > now));
      // Places in the coordinator's batch go to the jobs ahead of this one
      // first; sequences waiting for KV capacity claim none.
      this.place.update(this.running().length, this.blocked ? 0 : ready.length);
      if (this.blocked || ready.length === 0) return;
      const room = Math.min(options.maxBatchSequences - this.running().length, this.place.room());
      if (room <= 0) return;
      const batch = ready.slice(0, room);
      for (const b of batch) {
        this.pending.splice(this.pending.indexOf(b), 1);
        ctx.requests.admitted(b);
      }
      // Opening: their places are taken already (another job admitting
      // meanwhile sees them).
      this.place.update(this.running().length + batch.length, ready.length - batch.length);
      const placements = this.placeBatch(batch, lists);
      const outcomes = await Promise.all(
        batch.map(async (s, i) => {
          const placement = placements[i]!;
          if ("shards" in placement) return this.open(s, placement.shards);
          this.output.finish(s, "error", placement.error);
          return undefined;
        }),
      );
      this.place.update(this.running().length, 0);
      this.afterOpening(batch, outcomes);
    }
  }

  /** `up` without the nodes whose disk was full, unless that leaves none. */
  private withRoom(up: string[]): string[] {
    const roomy = up.filter((a) => !this.fullDisks.has(a));
    return roomy.length > 0 ? roomy : up;
  }

  /** Places `batch` on the attention nodes up (`lists`), after the running sequences' load; logs the wave. */
  private placeBatch(batch: readonly Sequence[], lists: { memory: string[]; storage: string[] }): Placement[] {
    const { shape } = this.job.ctx.model.header;
    // Load in position-heads, as placeSequences counts it.
    const load = new Map<string, number>();
    for (const r of this.running()) {
      for (const sh of r.shards) {
        const a = sh.node.address;
        load.set(a, (load.get(a) ?? 0) + maxPositions(r) * (sh.kvHeadEnd - sh.kvHeadStart));
      }
    }
    const placements = placeSequences(
      batch.map((s) => ({ positions: maxPositions(s), kv: kvOf(this.job, s) })),
      lists,
      this.job.ctx.options.storageThresholdTokens,
      load,
      { nKvHeads: shape.nKvHeads, groups: this.job.groups },
      this.planner.economics,
    );
    this.logPlacement(batch.length, placements);
    return placements;
  }

  /**
   * After a wave opened: those whose node did not answer are queued again
   * (tried after a backoff); those refused for room wait until capacity
   * frees (the job is blocked), or fail when nothing holds any.
   */
  private afterOpening(batch: readonly Sequence[], outcomes: readonly OpenResult[]): void {
    const { ctx } = this.job;
    const again = batch.filter((_, i) => outcomes[i] === "retry");
    if (again.length > 0) {
      this.pending.push(...again);
      this.pending.sort((a, b) => a.index - b.index);
    }
    // Refused for room; "moved" ones are queued again by move().
    const refusals = outcomes.map((o) => (typeof o === "object" ? o.refused : undefined));
    const refused = batch.filter((_, i) => refusals[i] !== undefined && batch[i]!.state === SequenceState.Opening);
    if (refused.length === 0) return;
    if (this.running().length === 0 && this.kv.releases.size === 0 && ctx.slots.running === 0) {
      // Nothing will free capacity (no sequence of this or another job
      // holds any): these can never fit.
      batch.forEach((s, i) => refusals[i] !== undefined && this.output.finish(s, "error", refusals[i]));
      return;
    }
    for (const s of refused) backToWaiting(s);
    this.pending.unshift(...refused);
    this.blocked = true;
    this.blockedAt = ctx.slots.freed;
    ctx.options.log(`${refused.length} sequence(s) wait for KV capacity: ${refusals.find((r) => r)}`);
  }

  /**
   * Opens every shard of `s` on `placed`; a refusal for capacity (returned)
   * closes the shards that did open; a full disk or no answer tries again
   * after a backoff (a full disk: elsewhere); any other failure finishes the
   * sequence. Returns "moved" when the sequence moved (or finished) while
   * its shards were opening: what opened is closed, and move() has queued it.
   */
  private async open(s: Sequence, placed: readonly ShardPlacement[]): Promise<OpenResult> {
    const { groups } = this.job;
    const id = s.seqId;
    const shards: Shard[] = placed.map((p) => ({ ...p, seqId: shardSequenceId(s.seqId, groups, p), opened: false }));
    startOpening(s, shards);
    const outcomes = await this.kv.open(s, shards);
    if (s.seqId !== id || s.finished) {
      this.kv.close(shards);
      return "moved";
    }
    const fatal = outcomes.find((o) => o.fatal)?.fatal;
    if (fatal !== undefined) {
      this.output.finish(s, "error", fatal);
      return undefined;
    }
    const full = outcomes.find((o) => o.diskFull !== undefined);
    if (full?.diskFull !== undefined && full.node) {
      // Placed again (after a backoff) where there is room.
      this.fullDisks.add(full.node.address);
      return this.openFailed(s, full.diskFull, full.node);
    }
    const down = outcomes.find((o) => o.unavailable !== undefined);
    if (down?.unavailable !== undefined) return this.openFailed(s, down.unavailable, down.node);
    s.openRetry = undefined;
    const refused = outcomes.find((o) => o.refused)?.refused;
    if (refused !== undefined) {
      // A close failed: let release() retry it in the background.
      if (await this.kv.closeRefused(s.shards)) this.kv.release(s);
      return { refused };
    }
    opened(s);
    return undefined;
  }

  /**
   * Its node does not answer (or its disk is full): the sequence is placed again after a backoff
   * (the node may be back, or known lost and avoided by then); a
   * memory-node failing for failoverMs is marked down; after retryTimeoutMs
   * the sequence fails.
   */
  private openFailed(s: Sequence, reason: string, node: AttentionNodeRef | undefined): OpenResult {
    const { options, membership } = this.job.ctx;
    const now = this.now();
    const r = (s.openRetry ??= { since: now, reason, notBefore: now, delay: 50, tries: 0 });
    r.reason = reason;
    r.delay = Math.min(r.delay * 2, 2000);
    r.notBefore = now + r.delay;
    r.tries++;
    // An open that timed out may still have landed: close every shard
    // (best effort), and open under a new id next time, so that a late
    // close cannot hit the new cache.
    for (const sh of s.shards) sh.opened = true;
    this.kv.close(s.shards);
    backToWaiting(s, retriedSequenceId(this.job.jobId, this.job.nonce, s.index, s.moves, r.tries));
    if (now - r.since > options.retryTimeoutMs) {
      const gaveUp = `gave up opening its KV cache after ${Math.round((now - r.since) / 1000)} s`;
      this.output.finish(s, "error", `${r.reason} (${gaveUp})`);
      return undefined;
    }
    if (node?.role === "memory" && now - r.since > Math.min(options.failoverMs, options.retryTimeoutMs)) {
      membership.markDown(node.address, r.reason);
    }
    options.log(`${s.seqId}: cannot open its KV cache: ${r.reason}; trying again in ${r.delay} ms`);
    return "retry";
  }

  /**
   * One line per node of a placement wave: groups placed, price and the
   * predicted $ per decoded token of all of them together.
   */
  private logPlacement(n: number, placements: readonly Placement[]): void {
    if (n === 0) return;
    const { jobId, groups } = this.job;
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
        `${e.groups} on ${nodeName(e.node)} (${describePrice(this.planner.economics.nodes.get(e.node.address))}; predicted ` +
        `${e.dollars === undefined ? "$?" : `$${e.dollars.toExponential(3)}`} per decode step)`,
    );
    this.job.ctx.options.log(
      `job ${jobId}: placed ${n} sequence(s)${groups > 1 ? ` in ${groups} KV-head groups` : ""}: ${parts.join("; ")}`,
    );
  }

  /**
   * Sequences whose node failed: give up after retryTimeoutMs (a
   * memory-node: failoverMs), else try to re-open them on their node (with
   * backoff) and check the KV cache survived.
   */
  async revive(): Promise<void> {
    const now = this.now();
    await Promise.all(
      this.job.seqs.map(async (s) => {
        const w = s.waiting;
        if (s.state !== SequenceState.WaitingForNode || !w || s.shards.length === 0 || now < w.nextTry) return;
        // Failing for too long: the node is lost (its sequences move). The
        // node the sequence waits for, not whether it is still failing:
        // another sequence's re-open may already have cleared it.
        const { options, membership } = this.job.ctx;
        const storage = w.node.role === "storage";
        const limit = storage ? options.retryTimeoutMs : Math.min(options.failoverMs, options.retryTimeoutMs);
        if (now - w.since > limit) {
          for (const sh of s.shards)
            if (this.failingNodes.has(sh.node.address)) membership.markDown(sh.node.address, w.reason);
          // markDown moved it unless the node was already marked (then move it here).
          if (s.shards.length > 0 && !s.finished) this.move(s, w.reason, w.since);
          return;
        }
        await this.reopen(s, w);
      }),
    );
  }

  private async reopen(s: Sequence, w: NonNullable<Sequence["waiting"]>): Promise<void> {
    const { options } = this.job.ctx;
    const id = s.seqId;
    const shards = s.shards;
    try {
      // Every shard: re-opening one that is fine is a no-op.
      const lengths = await this.kv.reopen(s, shards);
      if (s.seqId !== id) {
        // Moved meanwhile: what the re-open (re)created is not used.
        for (const sh of shards) sh.opened = true;
        this.kv.close(shards);
        return;
      }
      const lost = lengths.findIndex((n) => n < s.fed);
      if (lost >= 0) {
        const reason = `the KV cache of prompt "${s.id}" was lost on ${nodeName(s.shards[lost]!.node)} (it holds ${lengths[lost]} of ${s.fed} positions)`;
        options.log(`job ${this.job.jobId}: ${reason}; rebuilding it`);
        this.move(s, reason, w.since);
        void this.planner.replan(reason, 1);
      } else if (s.state === SequenceState.WaitingForNode) {
        for (const sh of s.shards) this.failingNodes.delete(sh.node.address);
        options.log(`${s.seqId}: ${[...new Set(s.shards.map((sh) => nodeName(sh.node)))].join(", ")} back`);
        revived(s);
      }
    } catch (err) {
      const e = RpcError.from(err);
      if (e.code === Code.DATA_LOSS && s.seqId === id && !s.finished) {
        // Its files there are damaged (a manifest missing or corrupt, a
        // truncated layer file): waiting cannot help.
        this.rebuild(s, e.message, `job ${this.job.jobId}`, w.since);
        return;
      }
      w.delay = Math.min(w.delay * 2, 2000);
      w.nextTry = this.now() + w.delay;
    }
  }

  /**
   * Moves `s` off its nodes because its own KV cache failed (`reason`
   * names the node and file) and logs it (`where` starts the line): it is
   * rebuilt from its tokens where placement puts it, or, past
   * {@link MAX_KV_FAULTS} rebuilds, fails with `reason`.
   */
  private rebuild(s: Sequence, reason: string, where: string, since = this.now()): void {
    s.kvFaults = (s.kvFaults ?? 0) + 1;
    if (s.kvFaults > MAX_KV_FAULTS) {
      this.output.finish(s, "error", `${reason} (its KV cache failed ${s.kvFaults} times; not rebuilt again)`);
      return;
    }
    this.job.ctx.options.log(`${where}: ${reason}; rebuilding prompt "${s.id}" from its tokens`);
    this.move(s, reason, since);
    void this.planner.replan(reason, 1);
  }

  /** Whether every sequence has finished. */
  done(): boolean {
    return this.job.seqs.every((s) => s.finished);
  }

  /**
   * The next step: decode for running sequences whose prompt is in, prefill
   * chunks (within `maxPrefillTokens` over the step) for the rest; one logit
   * row each. Empty when nothing can run now.
   */
  plan(): StepPlan {
    const parts: StepPart[] = [];
    let budget = this.job.ctx.options.maxPrefillTokens;
    for (const s of this.job.seqs) {
      if (s.state !== SequenceState.Running) continue;
      const end = prefillEnd(s);
      if (s.fed >= end) {
        parts.push({
          seq: s,
          seqId: s.seqId,
          startPos: s.fed,
          tokens: [s.generated[s.generated.length - 1]!],
          nLogitRows: 1,
        });
      } else if (budget > 0) {
        const n = Math.min(budget, end - s.fed);
        const known = s.generated.length === 0 ? s.promptIds : [...s.promptIds, ...s.generated];
        parts.push({ seq: s, seqId: s.seqId, startPos: s.fed, tokens: known.slice(s.fed, s.fed + n), nLogitRows: 1 });
        budget -= n;
      }
    }
    return { isDecode: parts.every((p) => p.seq.fed >= prefillEnd(p.seq)), parts };
  }

  /**
   * Everything left waits: for a failing node's next re-open try, or for
   * capacity that a release in flight is freeing.
   * @throws RpcError CANCELLED when the job is cancelled meanwhile.
   */
  async idle(): Promise<void> {
    const { signal } = this.job.ctx;
    const unfinished = this.job.seqs.filter((s) => !s.finished);
    const now = this.now();
    const next = Math.min(...unfinished.map((s) => s.waiting?.nextTry ?? now + 20));
    await Promise.race([sleep(Math.max(20, next - now), signal), ...this.kv.releases]);
    if (signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
  }

  /** The parts of `plan` still to send: running under the seq-id they were planned with. */
  alive(plan: StepPlan): StepPart[] {
    return plan.parts.filter((p) => p.seq.state === SequenceState.Running && p.seq.seqId === p.seqId);
  }

  /**
   * An attention node failed a step: when it names one sequence (its own
   * KV cache failed) that sequence is rebuilt (see the file comment); with
   * a transient error its sequences wait for it (revive re-opens them),
   * else they fail.
   */
  attentionFailed(
    node: AttentionNodeRef,
    error: Pick<NodeError, "code" | "message" | "reason" | "seqId">,
    parts: readonly StepPart[],
    stepId: bigint,
  ): void {
    const reason = `${nodeName(node)}: ${error.message}`;
    if (error.seqId) {
      if (error.reason === NodeErrorReason.DISK_FULL) this.fullDisks.add(node.address);
      for (const p of parts) this.rebuild(p.seq, reason, `step ${stepId}`);
      return;
    }
    if (TRANSIENT.has(error.code)) {
      this.job.ctx.options.log(`step ${stepId}: ${reason}; its ${parts.length} sequence(s) wait for it`);
      const now = this.now();
      const wait = { address: node.address, role: node.role };
      for (const p of parts) waitForNode(p.seq, { since: now, reason, nextTry: now + 100, delay: 100, node: wait });
      this.failingNodes.add(node.address);
    } else {
      for (const p of parts) this.output.finish(p.seq, "error", reason);
    }
  }
}
