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

/** Where one sequence's KV cache goes, or why it cannot be placed. */
export type Placement = { node: AttentionNodeRef } | { error: string };

/**
 * Chooses the attention node of each sequence. The plan of issue 2: "memory"
 * and "storage" are honoured as asked; "auto" goes to a storage-node when
 * prompt + max tokens exceeds `storageThresholdTokens` (long contexts are
 * cheapest on disk), else to a memory-node. Among nodes of a role, each
 * sequence goes to the one with the fewest positions placed so far in this
 * batch (greedy least-loaded), so a batch spreads evenly. Falls back to the
 * other role when a role has no nodes at all and the user said "auto".
 * With continuous batching `load` carries the positions of the sequences
 * still running, so newcomers go where there is room.
 */
export function placeSequences(
  requests: readonly PlacementRequest[],
  nodes: { memory: readonly string[]; storage: readonly string[] },
  storageThresholdTokens: number,
  /** Positions already placed on each node (sequences still running); updated in place. */
  load: Map<string, number> = new Map(),
): Placement[] {
  const pick = (role: "memory" | "storage"): AttentionNodeRef | undefined => {
    let best: string | undefined;
    for (const a of nodes[role]) {
      if (best === undefined || (load.get(a) ?? 0) < (load.get(best) ?? 0)) best = a;
    }
    return best === undefined ? undefined : { role, address: best };
  };
  return requests.map((r) => {
    let role: "memory" | "storage";
    if (r.kv === KvPlacement.MEMORY) role = "memory";
    else if (r.kv === KvPlacement.STORAGE) role = "storage";
    else {
      role = r.positions > storageThresholdTokens ? "storage" : "memory";
      if (nodes[role].length === 0) role = role === "memory" ? "storage" : "memory";
    }
    const node = pick(role);
    if (!node) return { error: `no ${role}-node in this cluster to hold the KV cache` };
    load.set(node.address, (load.get(node.address) ?? 0) + r.positions);
    return { node };
  });
}
