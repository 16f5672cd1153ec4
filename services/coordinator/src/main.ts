import { runUntilSignal } from "@tessera/core";
import { createCoordinator } from "./coordinator.js";
import type { CoordinatorOptions } from "./options.js";

/** Runs a coordinator as this process's main component until SIGINT/SIGTERM. */
export function runCoordinator(options: CoordinatorOptions): Promise<void> {
  return runUntilSignal(createCoordinator(options));
}
