/**
 * Prompt tokenising off the coordinator's event loop (issue 13: one
 * tenant's 50 prompts x 60 KB kept the coordinator from answering health
 * checks, heartbeats and every other tenant's calls): a bounded pool of
 * worker threads (piscina) running tokenize-worker.ts, fed by a fair queue.
 *
 * - Off the loop: a request's prompts are cut into tasks of consecutive
 *   prompts of at most {@link TOKENIZE_TASK_CHARS} characters (a longer
 *   prompt is a task alone); the event loop only moves text and ids.
 * - Fair: queued tasks wait in one queue per tenant, and within a tenant one
 *   per request; the pool takes the next task round-robin over tenants,
 *   then over that tenant's requests. A short prompt therefore waits for at
 *   most one task of each other tenant (and request) with work queued, plus
 *   the tasks already running, however much they queued first.
 * - Cancelled with its request: when the request's signal aborts, its
 *   queued tasks are dropped and a running one ends with its worker thread
 *   (piscina terminates it and starts a fresh one), so an abandoned request
 *   stops using CPU at once.
 * - Bounded: `threads` workers (the coordinator's `tokenizeThreads`), started
 *   on the first task, at a lower CPU priority than the event loop (nice
 *   {@link TOKENIZE_NICE}); close() ends them and fails what is queued.
 */
import { extname } from "node:path";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import { Code, RpcError } from "@tessera/proto";
import type { TokenizeOutcome, TokenizeTask } from "./tokenize-worker.js";

/** Most characters (UTF-16 units) of prompt text in one task, unless one prompt alone is longer. */
export const TOKENIZE_TASK_CHARS = 64 * 1024;

/** How much lower than the event loop the worker threads run (Linux nice increment, per thread). */
export const TOKENIZE_NICE = 10;

/** The tokenizer a request's prompts are encoded with (as the model cache loaded it). */
export interface TokenizerRef {
  tokenizerPath: string;
  vocabSize: number;
}

/** Who a request belongs to: its tenant (undefined: admins and calls without tokens share one queue) and its cancel signal. */
export interface TokenizeCaller {
  tenant: string | undefined;
  signal: AbortSignal;
}

/**
 * Per prompt: its token ids (BOS first, no EOS), or why it could not be
 * encoded. Int32Array as the worker sent them: turned into arrays one
 * prompt at a time by the caller (all of a 64 MiB request's at once would
 * hold the event loop for a second).
 */
export type EncodedPrompt = { ids: Int32Array } | { error: string };

/** What the pool is doing: tasks queued and running, and tenants with tasks queued. */
export interface TokenizerPoolStats {
  queued: number;
  running: number;
  tenants: number;
  /** threadId of each worker thread now (none before the first task). */
  threadIds: number[];
}

/** One queued task and how its request learns its outcome. */
interface Pending {
  readonly data: TokenizeTask;
  readonly request: RequestQueue;
  resolve(outcomes: TokenizeOutcome[]): void;
  reject(err: unknown): void;
}

/** A request's tasks not yet started. */
interface RequestQueue {
  readonly tenant: string;
  readonly tasks: Pending[];
  readonly signal: AbortSignal;
}

/**
 * Items served in turn: the one at the cursor is served next; a new item
 * goes in at the cursor (its first task is the next), so it waits for no
 * task of the others beyond those running.
 */
class Ring<T> {
  private readonly items: T[] = [];
  private at = 0;

  get size(): number {
    return this.items.length;
  }

  /** Adds `item`, to be served next. */
  add(item: T): void {
    this.items.splice(this.at, 0, item);
  }

  /** The item to serve now. */
  current(): T | undefined {
    return this.items[this.at];
  }

  /** Moves the cursor past the current item (served, and staying in the ring). */
  advance(): void {
    this.at = (this.at + 1) % this.items.length;
  }

  /** Removes `item`; false when it is not in the ring. */
  remove(item: T): boolean {
    const i = this.items.indexOf(item);
    if (i < 0) return false;
    this.items.splice(i, 1);
    if (i < this.at) this.at--;
    if (this.at >= this.items.length) this.at = 0;
    return true;
  }
}

/** A tenant's requests with tasks queued. */
interface TenantQueue {
  readonly tenant: string;
  readonly requests: Ring<RequestQueue>;
}

// dist/*.js under node, src/*.ts under tsx (whose loader the workers get through execArgv).
const WORKER_FILE = fileURLToPath(new URL(`./tokenize-worker${extname(import.meta.url)}`, import.meta.url));

/**
 * Cuts `texts` into runs of consecutive texts of at most `maxChars`
 * characters in all (a longer text is a run alone); returns each run's
 * [start, end) indexes, in order.
 */
export function taskRanges(texts: readonly string[], maxChars = TOKENIZE_TASK_CHARS): [number, number][] {
  const ranges: [number, number][] = [];
  let start = 0;
  let chars = 0;
  texts.forEach((t, i) => {
    if (i > start && chars + t.length > maxChars) {
      ranges.push([start, i]);
      start = i;
      chars = 0;
    }
    chars += t.length;
  });
  if (start < texts.length) ranges.push([start, texts.length]);
  return ranges;
}

/** The coordinator's tokeniser pool; see the file comment. */
export class TokenizerPool {
  private pool: Piscina<TokenizeTask, TokenizeOutcome[]> | undefined;
  /** Tenants with tasks queued, served in turn, and each by name. */
  private readonly tenants = new Ring<TenantQueue>();
  private readonly byTenant = new Map<string, TenantQueue>();
  private queuedTasks = 0;
  private running = 0;
  private closed = false;

  /** @param threads worker threads at most (a positive integer, the coordinator's `tokenizeThreads`). */
  constructor(private readonly threads: number) {}

  /**
   * Token ids of each of `texts` (BOS first, no EOS; Tokenizer.encode of
   * `tokenizer`), in order, computed on the pool's threads; a text whose
   * encode throws gets `{ error }` and the others go on.
   * @throws RpcError CANCELLED when `caller.signal` aborts (its queued tasks
   *   are dropped, a running one stopped); UNAVAILABLE when the pool is
   *   closed; the worker's error (e.g. CheckpointError naming the tokenizer
   *   file) when a task fails as a whole.
   */
  async encode(tokenizer: TokenizerRef, texts: readonly string[], caller: TokenizeCaller): Promise<EncodedPrompt[]> {
    const { signal } = caller;
    if (this.closed) throw new RpcError(Code.UNAVAILABLE, "the coordinator is stopping");
    if (signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
    if (texts.length === 0) return [];
    const tenant = caller.tenant ?? "";
    const request: RequestQueue = { tenant, tasks: [], signal };
    const outcomes = taskRanges(texts).map(
      ([start, end]) =>
        new Promise<TokenizeOutcome[]>((resolve, reject) => {
          const data = { ...tokenizer, texts: texts.slice(start, end) };
          request.tasks.push({ data, request, resolve, reject });
        }),
    );
    let queue = this.byTenant.get(tenant);
    if (!queue) {
      queue = { tenant, requests: new Ring() };
      this.byTenant.set(tenant, queue);
      this.tenants.add(queue);
    }
    queue.requests.add(request);
    this.queuedTasks += request.tasks.length;
    // The first rejection (cancel, close, a failed task) ends the request:
    // the rest of its tasks are dropped.
    const onAbort = () => this.drop(request, new RpcError(Code.CANCELLED, "job cancelled"));
    signal.addEventListener("abort", onAbort, { once: true });
    this.dispatch();
    try {
      const results = await Promise.all(outcomes);
      return results.flat().map((o) => (o instanceof Int32Array ? { ids: o } : o));
    } catch (err) {
      this.drop(request, err);
      throw err;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Tasks queued and running now, and tenants with tasks queued. */
  stats(): TokenizerPoolStats {
    return {
      queued: this.queuedTasks,
      running: this.running,
      tenants: this.tenants.size,
      threadIds: (this.pool?.threads ?? []).map((w) => w.threadId),
    };
  }

  /**
   * Stops the pool: queued tasks fail (UNAVAILABLE), running ones end with
   * their worker threads; resolves once the threads have exited. Later
   * encode() calls fail UNAVAILABLE.
   */
  async close(): Promise<void> {
    this.closed = true;
    const stopping = new RpcError(Code.UNAVAILABLE, "the coordinator is stopping");
    for (const queue of [...this.byTenant.values()]) {
      while (queue.requests.size > 0) this.drop(queue.requests.current()!, stopping);
    }
    const pool = this.pool;
    this.pool = undefined;
    await pool?.destroy();
  }

  /** Removes `request`'s queued tasks, failing them with `err`. */
  private drop(request: RequestQueue, err: unknown): void {
    for (const task of request.tasks.splice(0)) {
      this.queuedTasks--;
      task.reject(err);
    }
    const queue = this.byTenant.get(request.tenant);
    if (queue?.requests.remove(request) && queue.requests.size === 0) this.removeTenant(queue);
  }

  private removeTenant(queue: TenantQueue): void {
    this.tenants.remove(queue);
    this.byTenant.delete(queue.tenant);
  }

  /** The next task, round-robin over tenants and then over the tenant's requests. */
  private next(): Pending | undefined {
    const queue = this.tenants.current();
    if (!queue) return undefined;
    const request = queue.requests.current()!;
    const task = request.tasks.shift()!;
    this.queuedTasks--;
    if (request.tasks.length > 0) queue.requests.advance();
    else queue.requests.remove(request);
    if (queue.requests.size > 0) this.tenants.advance();
    else this.removeTenant(queue);
    return task;
  }

  /** Starts queued tasks while fewer than `threads` run. */
  private dispatch(): void {
    while (!this.closed && this.running < this.threads) {
      const task = this.next();
      if (!task) return;
      this.running++;
      this.poolOf()
        .run(task.data, { signal: task.request.signal })
        .then(task.resolve, (err: unknown) =>
          task.reject(
            task.request.signal.aborted
              ? new RpcError(Code.CANCELLED, "job cancelled")
              : this.closed
                ? new RpcError(Code.UNAVAILABLE, "the coordinator is stopping")
                : err,
          ),
        )
        .finally(() => {
          this.running--;
          this.dispatch();
        });
    }
  }

  private poolOf(): Piscina<TokenizeTask, TokenizeOutcome[]> {
    this.pool ??= new Piscina<TokenizeTask, TokenizeOutcome[]>({
      filename: WORKER_FILE,
      minThreads: this.threads,
      maxThreads: this.threads,
      // Idle threads stay: they hold the loaded tokenizers.
      idleTimeout: Infinity,
      niceIncrement: TOKENIZE_NICE,
    });
    return this.pool;
  }
}
