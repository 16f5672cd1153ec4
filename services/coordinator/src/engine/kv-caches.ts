/**
 * A job's KV caches on the attention nodes: OpenSequence for a sequence's
 * shards (classifying each failure), the re-open of a waiting sequence, and
 * CloseSequence in the background; runBatch awaits every close in flight
 * ({@link KvCaches.releases}) before it returns.
 */
import { Code, NodeErrorReason, RpcError } from "@tessera/proto";
import type { AttentionNodeRef } from "../placement.js";
import { layoutOf, nodeName, type BatchJob } from "./context.js";
import { maxPositions, type Sequence, type Shard } from "./sequence.js";

/** Errors of OpenSequence after which the sequence is placed again (the node did not answer). */
const OPEN_RETRY = new Set<number>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED]);

/** What OpenSequence of one shard gave: opened ({}), refused for room, its node's disk full, no answer, or a fatal error. */
export interface ShardOpening {
  refused?: string;
  /** The node's disk is full (RESOURCE_EXHAUSTED with reason DISK_FULL): place it elsewhere. */
  diskFull?: string;
  unavailable?: string;
  node?: AttentionNodeRef;
  fatal?: string;
}

/** Opens and closes one job's KV caches (see the file comment). */
export class KvCaches {
  /** CloseSequence calls in flight. */
  readonly releases = new Set<Promise<void>>();

  /** @param onFreed called when a close ends: capacity was freed, sequences refused for room may try again. */
  constructor(
    private readonly job: BatchJob,
    private readonly onFreed: () => void,
  ) {}

  /** OpenSequence of every shard of `s` at once (deadline connectTimeoutMs); marks those that opened. */
  open(s: Sequence, shards: readonly Shard[]): Promise<ShardOpening[]> {
    const { ctx } = this.job;
    return Promise.all(
      shards.map(async (sh): Promise<ShardOpening> => {
        try {
          const res = await ctx
            .attentionClient(sh.node.address)
            .openSequence(
              { seqId: sh.seqId, layout: layoutOf(this.job, sh), maxPositions: maxPositions(s) },
              { deadline: ctx.options.connectTimeoutMs, signal: ctx.signal },
            );
          sh.opened = true;
          sh.reservedBytes = Number(res.reservedBytes);
          if (res.length !== 0) return { fatal: `${nodeName(sh.node)} already holds a sequence ${sh.seqId}` };
        } catch (err) {
          // A node's own errors name it; transport errors do not.
          const e = RpcError.from(err);
          const name = nodeName(sh.node);
          const message = e.message.startsWith(name) ? e.message : `${name}: ${e.message}`;
          if (e.code === Code.RESOURCE_EXHAUSTED && e.reason === NodeErrorReason.DISK_FULL)
            return { diskFull: message, node: sh.node };
          if (e.code === Code.RESOURCE_EXHAUSTED) return { refused: message };
          return OPEN_RETRY.has(e.code) ? { unavailable: message, node: sh.node } : { fatal: message };
        }
        return {};
      }),
    );
  }

  /**
   * Re-opens every shard of a waiting sequence (a no-op for one that is
   * fine; deadline 1 s) and returns the positions each holds.
   * @throws RpcError when a node does not answer.
   */
  reopen(s: Sequence, shards: readonly Shard[]): Promise<number[]> {
    const { ctx } = this.job;
    return Promise.all(
      shards.map(async (sh) => {
        const res = await ctx
          .attentionClient(sh.node.address)
          .openSequence(
            { seqId: sh.seqId, layout: layoutOf(this.job, sh), maxPositions: maxPositions(s) },
            { deadline: 1000, signal: ctx.signal },
          );
        sh.reservedBytes = Number(res.reservedBytes);
        return res.length;
      }),
    );
  }

  /**
   * Closes the opened shards of a sequence refused for room before its next
   * try, and waits: outside `releases`, they free no room for anyone else.
   * Returns whether a close failed (the shard stays marked opened).
   */
  async closeRefused(shards: readonly Shard[]): Promise<boolean> {
    const { ctx } = this.job;
    await Promise.all(
      shards
        .filter((sh) => sh.opened)
        .map((sh) =>
          ctx
            .attentionClient(sh.node.address)
            .closeSequence({ seqId: sh.seqId }, { deadline: ctx.options.connectTimeoutMs })
            .then(
              () => (sh.opened = false),
              (err: unknown) => ctx.options.log(`close ${sh.seqId} on ${nodeName(sh.node)}: ${(err as Error).message}`),
            ),
        ),
    );
    return shards.some((sh) => sh.opened);
  }

  /** Frees a sequence's KV cache (every opened shard) on its attention nodes, in the background. */
  release(s: Sequence): void {
    this.close(s.shards);
  }

  /** Closes every opened shard of `shards` in the background (see release). */
  close(shards: readonly Shard[]): void {
    const { ctx } = this.job;
    for (const sh of shards) {
      if (!sh.opened) continue;
      sh.opened = false;
      const p = ctx
        .attentionClient(sh.node.address)
        .closeSequence({ seqId: sh.seqId }, { deadline: ctx.options.connectTimeoutMs })
        .then(
          () => undefined,
          (err: unknown) => ctx.options.log(`close ${sh.seqId} on ${nodeName(sh.node)}: ${(err as Error).message}`),
        )
        .finally(() => {
          this.releases.delete(p);
          this.onFreed();
        });
      this.releases.add(p);
    }
  }
}
