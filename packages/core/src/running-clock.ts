/**
 * Time judged by how long the judge itself was running. A watcher whose
 * timer should fire every few hundred ms but finds far more time gone by
 * was not running in between (the process was SIGSTOPped, paused by a long
 * GC, the machine slept): the heartbeats and answers that arrived meanwhile
 * wait unread in its sockets, so that gap says nothing about the nodes it
 * watches. {@link RunningClock} tells such a stall apart from running time;
 * {@link runningTimeout} is a timeout that counts running time only;
 * {@link RunningTime} ({@link runningNow}: the process's) is a reading of
 * running time, for windows measured between two readings.
 */

/** What one {@link RunningClock.tick} measured, in ms. */
export interface ClockTick {
  /** Time since the last tick that counts as running: the gap, or 0 when it was a stall. */
  runningMs: number;
  /** The gap when it exceeded `stallMs` (the watcher was itself stalled), else 0. */
  stalledMs: number;
}

/**
 * A monotonic clock read at each tick of a periodic watcher: a gap between
 * ticks above `stallMs` is a stall of the watcher, not running time.
 */
export class RunningClock {
  private last: number;

  /**
   * @param stallMs a gap between two ticks above this is a stall (choose
   *   well above the tick period plus the event-loop lag a busy process has).
   * @param now monotonic ms (injected by tests). @default performance.now
   * @throws RangeError when stallMs is not a positive number.
   */
  constructor(
    readonly stallMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(stallMs > 0)) throw new RangeError(`RunningClock: stallMs must be a positive number of ms, got ${stallMs}`);
    this.last = now();
  }

  /** Reads the clock: the gap since the last tick (or construction), split into running and stalled. */
  tick(): ClockTick {
    const t = this.now();
    const gap = Math.max(0, t - this.last);
    this.last = t;
    return gap > this.stallMs ? { runningMs: 0, stalledMs: gap } : { runningMs: gap, stalledMs: 0 };
  }
}

/** Options of {@link runningTimeout}. */
export interface RunningTimeoutOptions {
  /** The timer re-arms every this many ms at most. @default 1000 */
  sliceMs?: number;
  /** A slice that took this much longer than asked was a stall, not running time. @default 1000 */
  lateMs?: number;
  /** Monotonic ms (tests). @default performance.now */
  now?: () => number;
}

/**
 * Calls `onExpire` once the process has been running for `ms` since this
 * call (time it was stopped or stalled does not count), unless the
 * returned function is called first. After a stall the timer re-arms, so
 * answers that arrived during it (read in the next I/O phase) come first;
 * `onExpire` itself runs after the I/O of the tick that found the time up.
 * Like setTimeout, it keeps the process alive until it fires or is cancelled.
 * @throws RangeError when ms is not a positive number.
 */
export function runningTimeout(ms: number, onExpire: () => void, o: RunningTimeoutOptions = {}): () => void {
  if (!(ms > 0)) throw new RangeError(`runningTimeout: ms must be a positive number, got ${ms}`);
  const sliceMs = o.sliceMs ?? 1000;
  const lateMs = o.lateMs ?? 1000;
  let left = ms;
  let slice = Math.min(sliceMs, left);
  const clock = new RunningClock(slice + lateMs, o.now);
  let timer: NodeJS.Timeout | NodeJS.Immediate | undefined;
  let done = false;
  const arm = () => {
    timer = setTimeout(fire, slice);
  };
  const fire = () => {
    left -= clock.tick().runningMs;
    if (left > 0) {
      slice = Math.min(sliceMs, left);
      return arm();
    }
    timer = setImmediate(() => {
      if (done) return;
      done = true;
      onExpire();
    });
  };
  arm();
  return () => {
    done = true;
    clearTimeout(timer as NodeJS.Timeout);
    clearImmediate(timer as NodeJS.Immediate);
  };
}

/** Options of {@link RunningTime}. */
export interface RunningTimeOptions {
  /** Once started, the clock is read every this many ms (so that any stall shows as a gap). @default 250 */
  periodMs?: number;
  /** A gap between two readings above this is a stall, not running time. @default periodMs + 1000 (as runningTimeout's lateMs) */
  stallMs?: number;
  /** Monotonic ms (tests). @default performance.now */
  now?: () => number;
}

/**
 * A monotonic reading of how long the process has been running, in ms
 * since construction: a gap between two readings above `stallMs` (the
 * process was SIGSTOPped, paused by a long GC, the machine slept) adds
 * nothing. {@link start} reads it every `periodMs` (an unref'd timer), so a
 * stall shows as one gap however rarely the windows measured with it read
 * it. Windows such as "failing for longer than --retry-timeout" compare
 * two readings of it instead of Date.now(): a pause of the watcher does
 * not use them up.
 */
export class RunningTime {
  private total = 0;
  private readonly clock: RunningClock;
  private readonly periodMs: number;
  private timer: NodeJS.Timeout | undefined;

  /** @throws RangeError when periodMs or stallMs is not a positive number. */
  constructor(o: RunningTimeOptions = {}) {
    this.periodMs = o.periodMs ?? 250;
    if (!(this.periodMs > 0))
      throw new RangeError(`RunningTime: periodMs must be a positive number of ms, got ${this.periodMs}`);
    this.clock = new RunningClock(o.stallMs ?? this.periodMs + 1000, o.now);
  }

  /** Running ms since construction (or the last reading's total plus the gap since, when that is no stall). */
  now(): number {
    this.total += this.clock.tick().runningMs;
    return this.total;
  }

  /** Reads the clock every periodMs from now on (the timer does not keep the process alive). Idempotent. */
  start(): this {
    this.timer ??= setInterval(() => this.now(), this.periodMs).unref();
    return this;
  }

  /** Stops the periodic reading. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

let processRunningTime: RunningTime | undefined;

/**
 * This process's {@link RunningTime} in ms (with its defaults, started at
 * the first call; readings before that count from then). For windows that
 * must count only the time the process was running.
 */
export function runningNow(): number {
  processRunningTime ??= new RunningTime().start();
  return processRunningTime.now();
}
