/**
 * One gpu-node holds one model (and layer range) at a time, so concurrent
 * jobs must agree on it. Within this coordinator, a {@link ModelLease} lets
 * any number of jobs on the loaded one run together; a job for another
 * model or range waits until they are all done, then loads its own (keyed
 * by model path, layer range, embed and head). Across coordinators, the
 * gpu-node keeps the lease: each Load names this coordinator's
 * {@link holderId}, a Load of another model under another coordinator's
 * live lease is refused (reason LEASED) and {@link loadStageModel} waits and
 * tries again, and each step names the model id the Load answered
 * (ForwardRequest.model), so a node that holds anything else fails it
 * (MODEL_MISMATCH) instead of answering with another model's output.
 */
import { randomUUID } from "node:crypto";
import { runningNow } from "@tessera/core";
import {
  Code,
  NodeErrorReason,
  RpcError,
  type Client,
  type GpuNode,
  type LoadRequestSchema,
  type LoadResponse,
  type MessageInitShape,
} from "@tessera/proto";
import { sleep } from "./engine/context.js";

/** A new holder id for one coordinator instance: "coordinator-" and 12 hex digits. */
export function holderId(): string {
  return `coordinator-${randomUUID().replaceAll("-", "").slice(0, 12)}`;
}

/**
 * Loads a stage on a gpu-node as `req.holder`. A refusal because another
 * coordinator's lease is live (RpcError reason LEASED) is tried again after
 * a backoff (100 ms doubling to 2 s, each wait logged) for up to
 * `retryTimeoutMs` of running time (@tessera/core's runningNow), then thrown.
 * @throws RpcError of the Load (LEASED when the lease never came free);
 *   CANCELLED when `signal` aborts.
 */
export async function loadStageModel(
  client: Pick<Client<typeof GpuNode>, "load">,
  req: MessageInitShape<typeof LoadRequestSchema>,
  opts: { retryTimeoutMs: number; log(line: string): void; address: string },
  signal: AbortSignal,
): Promise<LoadResponse> {
  // Counted in the coordinator's running time, as the engine's retry windows.
  const since = runningNow();
  let delay = 100;
  for (;;) {
    try {
      return await client.load(req, { signal });
    } catch (err) {
      const e = RpcError.from(err);
      if (signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled", { cause: err });
      if (e.reason !== NodeErrorReason.LEASED || runningNow() + delay - since > opts.retryTimeoutMs) throw e;
      opts.log(`gpu-node ${opts.address}: Load refused: ${e.message}; retrying in ${delay} ms`);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 2000);
    }
  }
}

/**
 * The jobs of this coordinator on one gpu-node (see the file comment).
 * When the last one ends, `onIdle` tells the node (GpuNode.Release), so
 * another coordinator need not wait for the lease TTL; the next acquire
 * waits for that call first, so its own Load is not released after it.
 */
export class ModelLease {
  private model: string | undefined;
  private holders = 0;
  private readonly waiters: (() => void)[] = [];
  private releasing: Promise<void> = Promise.resolve();

  /** @param onIdle called when the last holder releases (errors are the callee's to log). */
  constructor(private readonly onIdle: () => Promise<void> = async () => {}) {}

  /**
   * Resolves with a release function once `model` may run on the node.
   * @throws the signal's reason when it aborts while waiting.
   */
  async acquire(model: string, signal: AbortSignal): Promise<() => void> {
    await this.releasing;
    while (this.holders > 0 && this.model !== model) {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal.reason as Error);
        signal.addEventListener("abort", onAbort, { once: true });
        this.waiters.push(() => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        });
      });
    }
    this.model = model;
    this.holders++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holders > 0) return;
      this.releasing = this.onIdle().catch(() => undefined);
      const waiters = this.waiters.splice(0);
      void this.releasing.then(() => {
        for (const wake of waiters) wake();
      });
    };
  }
}
