/**
 * The coordinator's running batch, shared by every job it runs (issue 5):
 * at most `capacity` sequences (`--max-batch`) hold a place in it at once,
 * whichever job they belong to, and a free place goes to the waiting
 * sequences of the highest-priority job first (oldest job first within a
 * priority). So a high-priority job's sequences join the running batch
 * ahead of the queued sequences of a low-priority job that is already
 * running, as the running ones finish — continuous batching (Orca, Yu et
 * al. OSDI 2022) with the admission queue ordered by job priority.
 *
 * Each job still runs its own decode steps; what is shared is the places.
 */

const RANKS = new Map<string, number>([
  ["high", 0],
  ["normal", 1],
  ["low", 2],
]);

/** A job priority's rank, 0 most urgent: "high" 0, "normal" 1, "low" 2; undefined for anything else. */
export function priorityRank(priority: string): number | undefined {
  return RANKS.get(priority);
}

interface Member {
  readonly rank: number;
  readonly order: number;
  running: number;
  waiting: number;
}

/** A job's handle on the shared batch; see {@link BatchSlots.join}. */
export interface BatchSlotsMember {
  /**
   * Reports this job's sequences in the batch (`running`) and those
   * waiting to join that could join now (`waiting`).
   */
  update(running: number, waiting: number): void;
  /**
   * How many of this job's waiting sequences may join now: the free
   * places less those that jobs ahead of it (higher priority, or the same
   * priority and started earlier) are waiting for.
   */
  room(): number;
  /** Leaves the batch (the job ended); idempotent. */
  leave(): void;
}

/** Places in the running batch, shared by the jobs of one coordinator. */
export class BatchSlots {
  private readonly members = new Set<Member>();
  private joined = 0;
  private freedCount = 0;

  /** @param capacity most sequences in the batch at once (the coordinator's maxBatchSequences). */
  constructor(readonly capacity: number) {}

  /**
   * A job joins with its priority ("high", "normal", "low"; anything else
   * counts as "normal").
   */
  join(priority: string): BatchSlotsMember {
    const me: Member = { rank: priorityRank(priority) ?? 1, order: this.joined++, running: 0, waiting: 0 };
    this.members.add(me);
    const ahead = (o: Member) => o.rank < me.rank || (o.rank === me.rank && o.order < me.order);
    return {
      update: (running, waiting) => {
        if (running < me.running) this.freedCount++;
        me.running = running;
        me.waiting = waiting;
      },
      room: () => {
        let used = 0;
        let reserved = 0;
        for (const o of this.members) {
          used += o.running;
          if (o !== me && ahead(o)) reserved += o.waiting;
        }
        return Math.max(0, this.capacity - used - reserved);
      },
      leave: () => {
        if (this.members.delete(me) && me.running > 0) this.freedCount++;
      },
    };
  }

  /**
   * Counts the times any job gave places back (a sequence ended, a job
   * left): a job waiting for KV capacity that another job may have freed
   * tries again when it changes.
   */
  get freed(): number {
    return this.freedCount;
  }

  /** Sequences in the batch now, over every job. */
  get running(): number {
    let n = 0;
    for (const m of this.members) n += m.running;
    return n;
  }
}
