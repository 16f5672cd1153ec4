/**
 * One gpu-node holds one model (and layer range) at a time (its Forward
 * steps run on whatever it loaded last), so concurrent jobs must agree on
 * it. A lease lets any number of jobs on the loaded one run together; a job
 * for another model or range waits until they are all done, then loads its
 * own. The coordinator keys leases by model path, layer range, embed and
 * head.
 */
export class ModelLease {
  private model: string | undefined;
  private holders = 0;
  private readonly waiters: (() => void)[] = [];

  /**
   * Resolves with a release function once `model` may run on the node.
   * @throws the signal's reason when it aborts while waiting.
   */
  async acquire(model: string, signal: AbortSignal): Promise<() => void> {
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
      if (--this.holders === 0) for (const wake of this.waiters.splice(0)) wake();
    };
  }
}
