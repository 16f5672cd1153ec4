/**
 * The job's plan: at job start and at every re-plan the job asks every
 * attention node up its Info (price, read bandwidth, profile, capacity,
 * use) and plans with packages/scheduler's planner (job-plan.ts), for the
 * role most of its unfinished sequences need; the plan's KV shares feed
 * placement (see placeSequences), and each plan is sent as a Plan event and
 * logged. A node that does not answer at all at job start is marked lost at
 * once. Re-plans run one at a time, in order.
 */
import { Code, type JobPlan } from "@tessera/proto";
import { describeJobPlan, jobPlanMessage, planKv, surveyAttentionNodes, type JobWorkload } from "../job-plan.js";
import { kvRole, type AttentionNodeInfo, type PlacementEconomics } from "../placement.js";
import { noteKvCapacity } from "../serving-metrics.js";
import { kvOf, type BatchJob } from "./context.js";
import { maxPositions, type Sequence } from "./sequence.js";
import type { AttentionRole } from "@tessera/core";

const MiB = 1024 ** 2;

/** "$0.50/h, 12.3 GB/s" with "?" for an unknown figure. */
export function describePrice(info: AttentionNodeInfo | undefined): string {
  const price = info && info.pricePerHour > 0 ? `$${info.pricePerHour}/h` : "$?/h";
  const bw = info && info.readBytesPerSecond > 0 ? `${(info.readBytesPerSecond / 1e9).toFixed(1)} GB/s` : "? GB/s";
  return `${price}, ${bw}`;
}

/** Plans and re-plans one job (see the file comment). */
export class JobPlanner {
  /** Plans made so far (the Plan event's revision). */
  revision = 0;
  /** The latest plan (the Summary's). */
  lastPlan: JobPlan | undefined;
  /** Price, bandwidth, room and the plan's shares of each attention node, for placement. */
  readonly economics: PlacementEconomics;
  private planning: Promise<void> = Promise.resolve();

  /** @param onPlanned called after each plan: room may have appeared. */
  constructor(
    private readonly job: BatchJob,
    private readonly onPlanned: () => void,
  ) {
    const { shape } = job.ctx.model.header;
    this.economics = { nodes: new Map(), bytesPerPositionHead: shape.nLayers * 2 * shape.headDim * 4 };
  }

  /** Re-plans after the ones queued; `moved` sequences move because of `reason`. Never rejects. */
  replan(reason: string, moved: number): Promise<void> {
    return (this.planning = this.planning
      .then(() => this.plan(reason, moved))
      .catch((err: unknown) => {
        // Placement goes on with the previous plan's figures.
        this.job.ctx.options.log(`job ${this.job.jobId}: re-plan (${reason}) failed: ${(err as Error).message}`);
      }));
  }

  /** Waits for the re-plans queued. */
  settled(): Promise<void> {
    return this.planning.catch(() => undefined);
  }

  private async plan(reason: string, moved: number): Promise<void> {
    const { ctx, jobId, groups } = this.job;
    const { options, membership, signal } = ctx;
    const up = [
      ...membership.up("memory").map((address) => ({ role: "memory" as const, address })),
      ...membership.up("storage").map((address) => ({ role: "storage" as const, address })),
    ];
    const surveys = await surveyAttentionNodes(up, ctx.attentionClient, options.connectTimeoutMs, signal, (n, e) => {
      if (e.code === Code.UNAVAILABLE && this.revision === 0) {
        // Not answering at all at job start: nothing is placed on it
        // until it is back. (Not at a re-plan, nor for a slow answer:
        // marking a node lost moves every job's sequences off it,
        // which failing steps decide after failoverMs.)
        options.log(`job ${jobId}: ${n.role}-node ${n.address}: no answer (${e.message}); marked lost`);
        membership.markDown(n.address, `${n.role}-node ${n.address}: ${e.message}`);
      } else {
        options.log(`job ${jobId}: ${n.role}-node ${n.address}: no Info (${e.message}); placed by load only`);
      }
    });
    // Bytes this job holds on each node now: the node's used_bytes
    // counts them, and placement adds the job's own load again, so the
    // room of others' use is capacity - (used - this job's).
    const own = this.ownBytes();
    const nodes = new Map<string, AttentionNodeInfo>();
    for (const sv of surveys) {
      noteKvCapacity(sv.address, Number(sv.info.capacityBytes));
      const othersUse = Math.max(0, Number(sv.info.usedBytes) - (own.get(sv.address) ?? 0));
      sv.info.usedBytes = BigInt(othersUse);
      const info: AttentionNodeInfo = {
        pricePerHour: sv.info.pricePerHour,
        readBytesPerSecond: sv.info.readBytesPerSecond,
        capacityBytes: Number(sv.info.capacityBytes),
        usedBytes: othersUse,
      };
      nodes.set(sv.address, info);
      if (this.revision === 0) {
        options.log(
          `job ${jobId}: ${sv.role}-node ${sv.address}: ${describePrice(info)}, ` +
            `${((info.capacityBytes - info.usedBytes) / MiB).toFixed(1)} of ${(info.capacityBytes / MiB).toFixed(1)} MiB free` +
            `${sv.info.profile ? ", profiled" : ""}`,
        );
      }
    }
    const { role, mine } = this.majorityRole();
    const workload: JobWorkload = {
      batch: Math.max(1, Math.min(options.maxBatchSequences, mine.length)),
      promptTokens: Math.max(1, ...mine.map((s) => s.promptIds.length + s.generated.length)),
      outputTokens: Math.max(1, ...mine.map((s) => s.maxTokens)),
    };
    const candidates = surveys.filter((sv) => sv.role === role);
    const kv =
      candidates.length > 0 && mine.length > 0
        ? planKv(ctx.model.header.shape, ctx.gpuSurvey, candidates, workload, groups)
        : undefined;
    this.economics.nodes = nodes;
    this.economics.shares = options.kvPlacement === "plan" ? kv?.shares : undefined;
    this.revision++;
    const plan = jobPlanMessage(
      kv,
      {
        revision: this.revision,
        reason,
        movedSequences: moved,
        stages: ctx.stages,
        kvHeadGroups: groups,
        batch: workload.batch,
      },
      mine.length === 0 ? "no sequence left to place" : `no ${role}-node up: sequences wait for one`,
    );
    this.lastPlan = plan;
    options.log(`job ${jobId}: ${describeJobPlan(plan)}${moved > 0 ? `; ${moved} sequence(s) move` : ""}`);
    ctx.emit({ event: { case: "plan", value: plan } });
    this.onPlanned();
  }

  /** Bytes of KV cache this job's opened shards may fill on each node, by address. */
  private ownBytes(): Map<string, number> {
    const own = new Map<string, number>();
    for (const q of this.job.seqs) {
      if (q.finished) continue;
      for (const sh of q.shards) {
        if (!sh.opened) continue;
        const bytes = maxPositions(q) * (sh.kvHeadEnd - sh.kvHeadStart) * this.economics.bytesPerPositionHead;
        own.set(sh.node.address, (own.get(sh.node.address) ?? 0) + bytes);
      }
    }
    return own;
  }

  /** The role most unfinished sequences need, and those sequences. */
  private majorityRole(): { role: AttentionRole; mine: Sequence[] } {
    const { membership, options } = this.job.ctx;
    const lists = { memory: membership.up("memory"), storage: membership.up("storage") };
    const byRole = { memory: [] as Sequence[], storage: [] as Sequence[] };
    for (const s of this.job.seqs) {
      if (s.finished) continue;
      byRole[kvRole({ positions: maxPositions(s), kv: kvOf(this.job, s) }, lists, options.storageThresholdTokens)].push(
        s,
      );
    }
    const role = byRole.storage.length > byRole.memory.length ? "storage" : "memory";
    return { role, mine: byRole[role] };
  }
}
