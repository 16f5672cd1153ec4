import { KvPlacement } from "@tessera/proto";

/** An attention node the coordinator can place KV caches on. */
export interface AttentionNodeRef {
  role: "memory" | "storage";
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
 * Chooses the attention node of each sequence, or of each of its KV-head
 * groups. The plan of issue 2: "memory" and "storage" are honoured as asked;
 * "auto" goes to a storage-node when prompt + max tokens exceeds
 * `storageThresholdTokens` (long contexts are cheapest on disk), else to a
 * memory-node. Falls back to the other role when a role has no nodes at all
 * and the user said "auto". All groups of a sequence get the same role.
 *
 * Among the nodes of a role, each group goes to the least-loaded node not
 * yet holding a group of the same sequence (so no node needs the whole
 * sequence's cache when there are enough nodes; HeadInfer), else to the
 * least-loaded one; ties go to the first node listed. Load is counted in
 * position-heads (positions x KV heads), proportional to KV bytes, so whole
 * sequences and groups weigh alike; a batch spreads evenly. With continuous
 * batching `load` carries the sequences still running, so newcomers go
 * where there is room.
 * @param load position-heads already placed on each node (by address); updated in place.
 * @param split how each sequence's KV heads are split. @default one group of one head (load in positions)
 * @throws RangeError when `split.groups` does not divide `split.nKvHeads`.
 */
export function placeSequences(
  requests: readonly PlacementRequest[],
  nodes: { memory: readonly string[]; storage: readonly string[] },
  storageThresholdTokens: number,
  load: Map<string, number> = new Map(),
  split: KvHeadSplit = { nKvHeads: 1, groups: 1 },
): Placement[] {
  const ranges = splitKvHeads(split.nKvHeads, split.groups);
  const pick = (role: "memory" | "storage", taken: ReadonlySet<string>): string | undefined => {
    let best: string | undefined;
    for (const fresh of [true, false]) {
      for (const a of nodes[role]) {
        if (fresh && taken.has(a)) continue;
        if (best === undefined || (load.get(a) ?? 0) < (load.get(best) ?? 0)) best = a;
      }
      if (best !== undefined) return best;
    }
    return undefined;
  };
  return requests.map((r) => {
    let role: "memory" | "storage";
    if (r.kv === KvPlacement.MEMORY) role = "memory";
    else if (r.kv === KvPlacement.STORAGE) role = "storage";
    else {
      role = r.positions > storageThresholdTokens ? "storage" : "memory";
      if (nodes[role].length === 0) role = role === "memory" ? "storage" : "memory";
    }
    if (nodes[role].length === 0) return { error: `no ${role}-node in this cluster to hold the KV cache` };
    const taken = new Set<string>();
    const shards = ranges.map(([kvHeadStart, kvHeadEnd]) => {
      const address = pick(role, taken)!;
      taken.add(address);
      load.set(address, (load.get(address) ?? 0) + r.positions * (kvHeadEnd - kvHeadStart));
      return { node: { role, address }, kvHeadStart, kvHeadEnd };
    });
    return { shards };
  });
}
