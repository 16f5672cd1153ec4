import { KvPlacement } from "@tessera/proto";
import type { AttentionRole } from "@tessera/core";

/** An attention node the coordinator can place KV caches on. */
export interface AttentionNodeRef {
  role: AttentionRole;
  address: string;
}

/** What placement needs to know of one sequence. */
export interface PlacementRequest {
  /** Positions the sequence may occupy: prompt tokens + max new tokens. */
  positions: number;
  /** The user's choice for this sequence. */
  kv: KvPlacement;
}

/** One KV-head group [kvHeadStart, kvHeadEnd) of a sequence and the node that holds it. */
export interface ShardPlacement {
  node: AttentionNodeRef;
  kvHeadStart: number;
  kvHeadEnd: number;
  /**
   * Predicted $ of this group's attention per decoded token, at the
   * sequence's last position ({@link attentionDollarsPerToken}); undefined
   * when the node's price or read bandwidth is unknown.
   */
  dollarsPerToken?: number;
}

/** What the coordinator learnt of an attention node from its Info at job start. */
export interface AttentionNodeInfo {
  /** $/h; 0 = unknown. */
  pricePerHour: number;
  /** Bytes/s the node reads its KV cache at; 0 = unknown. */
  readBytesPerSecond: number;
  /** KV bytes the node may hold. */
  capacityBytes: number;
  /** KV bytes already reserved when asked (by other jobs), not counting the `load` placement is given. */
  usedBytes: number;
}

/** What price-aware placement needs beyond the node lists. */
export interface PlacementEconomics {
  /** Info of each node by address; a node missing here is of unknown price and room. */
  nodes: ReadonlyMap<string, AttentionNodeInfo>;
  /**
   * KV bytes of one position of one KV head over all layers:
   * n_layers x 2 (K, V) x head_dim x 4 (f32), as the nodes reserve it
   * (core's kvSequenceBytes).
   */
  bytesPerPositionHead: number;
  /**
   * The job plan's share of each attention node (units: KV-head groups of
   * sequences; packages/scheduler's planner). When set for a role, its
   * groups go to the planned nodes in proportion to their shares; nodes
   * without a share take groups only when no planned node has room.
   */
  shares?: ReadonlyMap<string, number>;
}

/**
 * Predicted $ of one decode step's attention over `kvBytes` of KV cache on a
 * node, i.e. per token of the sequence: attention is memory-bound (Lamina,
 * Chen et al. 2024, §3; the roofline term bytes / bandwidth of
 * packages/scheduler's cost model), so the step holds the node for
 * kvBytes / readBytesPerSecond seconds, and that share of its price is
 * pricePerHour / 3600 x kvBytes / readBytesPerSecond.
 * @returns $ per token, or undefined when the price or bandwidth is unknown (0).
 */
export function attentionDollarsPerToken(info: AttentionNodeInfo | undefined, kvBytes: number): number | undefined {
  if (!info || !(info.pricePerHour > 0) || !(info.readBytesPerSecond > 0)) return undefined;
  return ((info.pricePerHour / 3600) * kvBytes) / info.readBytesPerSecond;
}

/** Where one sequence's KV cache goes (one shard per KV-head group, in head order), or why it cannot be placed. */
export type Placement = { shards: ShardPlacement[] } | { error: string };

/** How each sequence's KV heads are split: `groups` contiguous groups of `nKvHeads / groups` heads. */
export interface KvHeadSplit {
  nKvHeads: number;
  groups: number;
}

/**
 * The KV-head ranges [start, end) of `groups` equal contiguous groups of
 * `nKvHeads` heads (HeadInfer's head-wise split, Luo et al. 2025).
 * @throws RangeError when `groups` is not a positive divisor of `nKvHeads`.
 */
export function splitKvHeads(nKvHeads: number, groups: number): [number, number][] {
  if (!(Number.isInteger(groups) && groups >= 1 && nKvHeads % groups === 0)) {
    throw new RangeError(`kvHeadGroups ${groups} does not divide the model's n_kv_heads ${nKvHeads}`);
  }
  const size = nKvHeads / groups;
  return Array.from({ length: groups }, (_, g) => [g * size, (g + 1) * size]);
}

/**
 * The role whose nodes hold a sequence's KV cache: "memory" and "storage"
 * as asked; "auto" is a storage-node when its positions exceed
 * `storageThresholdTokens` (long contexts are cheapest on disk), else a
 * memory-node — or the other role when that role has no node.
 */
export function kvRole(
  r: PlacementRequest,
  nodes: { memory: readonly string[]; storage: readonly string[] },
  storageThresholdTokens: number,
): AttentionRole {
  if (r.kv === KvPlacement.MEMORY) return "memory";
  if (r.kv === KvPlacement.STORAGE) return "storage";
  const role = r.positions > storageThresholdTokens ? "storage" : "memory";
  if (nodes[role].length === 0) return role === "memory" ? "storage" : "memory";
  return role;
}

/**
 * Chooses the attention node of each sequence, or of each of its KV-head
 * groups. The plan of issue 2: "memory" and "storage" are honoured as asked;
 * "auto" goes to a storage-node when prompt + max tokens exceeds
 * `storageThresholdTokens` (long contexts are cheapest on disk), else to a
 * memory-node. Falls back to the other role when a role has no nodes at all
 * and the user said "auto". All groups of a sequence get the same role.
 *
 * With the job plan's `economics.shares` for the role, each group goes to
 * the planned node with room where (load + the group) / share is least —
 * the planner's proportions, kept as sequences come and go; a node not in
 * the plan is used only when no planned node has room.
 *
 * Otherwise, among the nodes of a role, each group goes to a node not yet holding a
 * group of the same sequence (so no node needs the whole sequence's cache
 * when there are enough nodes; HeadInfer), else to any. With `economics`
 * (the nodes' Info), a node without room for the group (capacity - used at
 * job start - this job's load) is skipped, and when every node of the role
 * advertises a price and a read bandwidth the group goes where its
 * attention is cheapest per decoded token, pricePerHour / 3600 x KV bytes /
 * readBytesPerSecond ({@link attentionDollarsPerToken}): the cheapest node
 * fills up first. Equal costs, a role with a node of unknown price or
 * bandwidth, and no `economics` all fall back to the least-loaded node;
 * remaining ties go to the first node listed. When no node has room the
 * least-loaded node is chosen anyway (it refuses, and the sequence waits
 * for capacity). Load is counted in position-heads (positions x KV heads),
 * proportional to KV bytes, so whole sequences and groups weigh alike; a
 * batch spreads evenly. With continuous batching `load` carries the
 * sequences still running, so newcomers go where there is room.
 * @param load position-heads already placed on each node (by address); updated in place.
 * @param split how each sequence's KV heads are split. @default one group of one head (load in positions)
 * @param economics the nodes' price, bandwidth and room. @default none (least-loaded only)
 * @throws RangeError when `split.groups` does not divide `split.nKvHeads`.
 */
export function placeSequences(
  requests: readonly PlacementRequest[],
  nodes: { memory: readonly string[]; storage: readonly string[] },
  storageThresholdTokens: number,
  load: Map<string, number> = new Map(),
  split: KvHeadSplit = { nKvHeads: 1, groups: 1 },
  economics?: PlacementEconomics,
): Placement[] {
  const ranges = splitKvHeads(split.nKvHeads, split.groups);
  const info = (a: string) => economics?.nodes.get(a);
  const bytesOf = (positionHeads: number) => positionHeads * (economics?.bytesPerPositionHead ?? 0);
  // Room is known only for nodes that answered Info.
  const hasRoom = (a: string, bytes: number) => {
    const i = info(a);
    return !i || i.capacityBytes - i.usedBytes - bytesOf(load.get(a) ?? 0) >= bytes;
  };
  // Price per byte read ($/h per byte/s): the only node-dependent factor of the cost.
  const rate = (a: string) => attentionDollarsPerToken(info(a), 1);
  const priced = (role: AttentionRole) => nodes[role].every((a) => rate(a) !== undefined);
  const share = (a: string) => economics?.shares?.get(a) ?? 0;
  const pick = (role: AttentionRole, taken: ReadonlySet<string>, bytes: number): string | undefined => {
    const planned = nodes[role].filter((a) => share(a) > 0);
    for (const fresh of [true, false]) {
      let best: string | undefined;
      let bestScore = Infinity;
      for (const a of planned) {
        if ((fresh && taken.has(a)) || !hasRoom(a, bytes)) continue;
        const score = ((load.get(a) ?? 0) + bytes / Math.max(1, economics?.bytesPerPositionHead ?? 1)) / share(a);
        if (score < bestScore) [best, bestScore] = [a, score];
      }
      if (best !== undefined) return best;
    }
    const byCost = priced(role);
    const better = (a: string, b: string) => {
      if (byCost) {
        const ra = rate(a)!;
        const rb = rate(b)!;
        if (Math.abs(ra - rb) > 1e-12 * Math.max(ra, rb)) return ra < rb;
      }
      return (load.get(a) ?? 0) < (load.get(b) ?? 0);
    };
    for (const [fresh, roomy] of [
      [true, true],
      [false, true],
      [false, false],
    ] as const) {
      let best: string | undefined;
      for (const a of nodes[role]) {
        if (fresh && taken.has(a)) continue;
        if (roomy && !hasRoom(a, bytes)) continue;
        if (best === undefined || (roomy ? better(a, best) : (load.get(a) ?? 0) < (load.get(best) ?? 0))) best = a;
      }
      if (best !== undefined) return best;
    }
    return undefined;
  };
  return requests.map((r) => {
    const role = kvRole(r, nodes, storageThresholdTokens);
    if (nodes[role].length === 0) return { error: `no ${role}-node in this cluster to hold the KV cache` };
    const taken = new Set<string>();
    const shards = ranges.map(([kvHeadStart, kvHeadEnd]): ShardPlacement => {
      const positionHeads = r.positions * (kvHeadEnd - kvHeadStart);
      const address = pick(role, taken, bytesOf(positionHeads))!;
      taken.add(address);
      load.set(address, (load.get(address) ?? 0) + positionHeads);
      const dollarsPerToken = attentionDollarsPerToken(info(address), bytesOf(positionHeads));
      return {
        node: { role, address },
        kvHeadStart,
        kvHeadEnd,
        ...(dollarsPerToken === undefined ? {} : { dollarsPerToken }),
      };
    });
    return { shards };
  });
}
