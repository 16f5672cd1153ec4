/**
 * The cluster a coordinator drives: which gpu-, memory- and storage-nodes
 * exist now, and which of them are down. Starts from the coordinator's
 * options; AddNode / RemoveNode change it at run time, and so does the
 * NATS node registry (joined / left / lost / back, see the coordinator's
 * `nats` option); running jobs mark attention nodes down when they stop
 * answering. Every change is announced to the
 * listeners (running jobs), which re-plan.
 */
import { checkHealth } from "@tessera/proto";
import { ROLES, type NodeRole } from "@tessera/core";

/** Role of a node in the cluster (@tessera/core's roles table). */
export type { NodeRole };

/** A change of the cluster, as running jobs are told of it. */
export interface MembershipChange {
  /**
   * "joined": added (AddNode, or it registered); "left": removed
   * (RemoveNode, or it deregistered); "lost": marked down by a job whose
   * calls to it fail, or by the registry when its heartbeats stop; "back":
   * a lost node answers its health check again, or heartbeats again.
   */
  kind: "joined" | "left" | "lost" | "back";
  role: NodeRole;
  address: string;
  /** Why, for logs: "AddNode", "RemoveNode", "registry: ...", the failing call's message. */
  reason: string;
}

/**
 * The live node set. Lists keep the order nodes were given or added in
 * (pipeline stage order for gpu-nodes). A node that is down stays a member
 * (it may come back) but {@link up} leaves it out; a health probe every
 * `probeIntervalMs` while any node is down announces "back" when it
 * answers SERVING again.
 */
export class Membership {
  private readonly nodes: Record<NodeRole, string[]>;
  private readonly down = new Map<string, { since: number; reason: string }>();
  private readonly listeners = new Set<(change: MembershipChange) => void>();
  private probe: NodeJS.Timeout | undefined;
  private probing = false;

  constructor(
    initial: { gpu: readonly string[]; memory: readonly string[]; storage: readonly string[] },
    private readonly probeIntervalMs = 1000,
  ) {
    this.nodes = { gpu: [...initial.gpu], memory: [...initial.memory], storage: [...initial.storage] };
  }

  /** Every member of `role` (down ones included), in order. */
  all(role: NodeRole): readonly string[] {
    return this.nodes[role];
  }

  /** Members of `role` not marked down, in order. */
  up(role: NodeRole): string[] {
    return this.nodes[role].filter((a) => !this.down.has(a));
  }

  /** The role of a member, or undefined. */
  roleOf(address: string): NodeRole | undefined {
    return (Object.keys(this.nodes) as NodeRole[]).find((r) => this.nodes[r].includes(address));
  }

  /** Whether `address` is marked down. */
  isDown(address: string): boolean {
    return this.down.has(address);
  }

  /** Calls `fn` on every change until the returned function is called. */
  subscribe(fn: (change: MembershipChange) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Adds a node. Returns false (and announces nothing) when it is already a
   * member of that role.
   * @param reason why, for the announcement. @default "AddNode"
   * @throws RangeError when `address` is already a member of another role.
   */
  add(role: NodeRole, address: string, reason = "AddNode"): boolean {
    const current = this.roleOf(address);
    if (current === role) return false;
    if (current) throw new RangeError(`${address} is already a ${current}-node of this cluster`);
    this.nodes[role].push(address);
    this.emit({ kind: "joined", role, address, reason });
    return true;
  }

  /**
   * Removes a node.
   * @param reason why, for the announcement. @default "RemoveNode"
   * @throws RangeError when it is not a member, or is the last gpu-node or
   *   the last attention node.
   */
  remove(address: string, reason = "RemoveNode"): NodeRole {
    const role = this.roleOf(address);
    if (!role) throw new RangeError(`${address} is not a node of this cluster`);
    if (role === "gpu" && this.nodes.gpu.length === 1) throw new RangeError(`${address} is the last gpu-node`);
    if (role !== "gpu" && this.nodes.memory.length + this.nodes.storage.length === 1) {
      throw new RangeError(`${address} is the last attention node`);
    }
    this.nodes[role] = this.nodes[role].filter((a) => a !== address);
    this.down.delete(address);
    this.emit({ kind: "left", role, address, reason });
    return role;
  }

  /** Marks a member down (announced once) and starts probing it. */
  markDown(address: string, reason: string): void {
    const role = this.roleOf(address);
    if (!role || this.down.has(address)) return;
    this.down.set(address, { since: Date.now(), reason });
    this.probe ??= setInterval(() => void this.probeDown(), this.probeIntervalMs);
    this.probe.unref();
    this.emit({ kind: "lost", role, address, reason });
  }

  /**
   * Clears a member's down mark and announces "back" (the registry saw it
   * heartbeat again). Returns false (announcing nothing) when it is not a
   * member or not down.
   */
  markUp(address: string, reason = "back"): boolean {
    const role = this.roleOf(address);
    if (!role || !this.down.delete(address)) return false;
    if (this.down.size === 0) {
      clearInterval(this.probe);
      this.probe = undefined;
    }
    this.emit({ kind: "back", role, address, reason });
    return true;
  }

  /** Stops probing. */
  close(): void {
    clearInterval(this.probe);
    this.probe = undefined;
    this.listeners.clear();
  }

  private async probeDown(): Promise<void> {
    if (this.probing) return;
    this.probing = true;
    try {
      await Promise.all(
        [...this.down.keys()].map(async (address) => {
          const role = this.roleOf(address);
          if (!role) return;
          const health = await checkHealth(address, ROLES[role].service, Math.min(1000, this.probeIntervalMs));
          if (health !== "SERVING" || !this.down.has(address)) return;
          this.down.delete(address);
          this.emit({ kind: "back", role, address, reason: "health check answers SERVING" });
        }),
      );
    } finally {
      this.probing = false;
      if (this.down.size === 0) {
        clearInterval(this.probe);
        this.probe = undefined;
      }
    }
  }

  /** Tells every listener; one that throws is logged (to stderr) and does not stop the others. */
  private emit(change: MembershipChange): void {
    for (const fn of [...this.listeners]) {
      try {
        fn(change);
      } catch (err) {
        process.stderr.write(
          `membership listener failed on ${change.kind} ${change.address}: ${(err as Error).message}\n`,
        );
      }
    }
  }
}
