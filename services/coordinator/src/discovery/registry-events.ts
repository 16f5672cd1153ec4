/**
 * How a discovery source (the NATS node registry, Kubernetes pods) drives
 * the coordinator's {@link Membership}, as AddNode / RemoveNode and failing
 * calls do; nodes given in the options stay members.
 */
import type { RegistryEvent } from "@tessera/nats";
import type { Membership } from "../membership.js";

/** A node registered, deregistered, stopped or resumed heartbeating (or a pod did the like). */
export type DiscoveryEvent = Pick<RegistryEvent, "kind" | "role" | "address" | "reason">;

/**
 * Applies `e` to `membership`: joined adds (or marks up), left removes
 * (the last gpu-node or attention node stays a member, down), lost marks
 * down, back marks up. An event the membership refuses is logged and
 * ignored; never throws.
 */
export function applyDiscoveryEvent(membership: Membership, e: DiscoveryEvent, log: (line: string) => void): void {
  const why = `registry: ${e.reason}`;
  try {
    switch (e.kind) {
      case "joined":
        // A member already (given in the options, or it restarted): up again if it was down.
        if (!membership.add(e.role, e.address, why)) membership.markUp(e.address, why);
        break;
      case "left":
        if (!membership.roleOf(e.address)) break;
        try {
          membership.remove(e.address, why);
        } catch (err) {
          // The last gpu-node or attention node stays a member, down, until another registers.
          log(`cluster: ${e.role}-node ${e.address} deregistered: ${(err as Error).message}; kept, down`);
          membership.markDown(e.address, why);
        }
        break;
      case "lost":
        membership.markDown(e.address, why);
        break;
      case "back":
        membership.markUp(e.address, why);
        break;
    }
  } catch (err) {
    log(`cluster: registry ${e.kind} of ${e.role}-node ${e.address} ignored: ${(err as Error).message}`);
  }
}
