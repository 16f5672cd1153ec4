/** The busy/idle clock of one step on a gpu-node (StepTimings.dense_seconds and attention_wait_seconds). */
import { performance } from "node:perf_hooks";

/**
 * Where a step's wall time went, with micro-batches overlapping: busy while
 * some running micro-batch is not waiting for attention (embedding, dense
 * graphs, gather/scatter, head), idle while every running one is. With one
 * micro-batch, idle is the plain attention wait; with several, it is what
 * pipelining did not hide.
 */
export class StepClock {
  busySeconds = 0;
  idleSeconds = 0;
  private active = 0;
  private waiting = 0;
  private since = performance.now();

  /** A micro-batch starts running. */
  start(): void {
    this.change(() => this.active++);
  }

  /** A micro-batch ends (it is not waiting). */
  end(): void {
    this.change(() => this.active--);
  }

  /** A running micro-batch starts waiting for attention. */
  wait(): void {
    this.change(() => this.waiting++);
  }

  /** A waiting micro-batch has its attention replies. */
  resume(): void {
    this.change(() => this.waiting--);
  }

  private state(): "none" | "busy" | "idle" {
    if (this.active === 0) return "none";
    return this.waiting === this.active ? "idle" : "busy";
  }

  private change(f: () => void): void {
    const before = this.state();
    f();
    if (this.state() === before) return;
    const now = performance.now();
    if (before === "busy") this.busySeconds += (now - this.since) / 1000;
    else if (before === "idle") this.idleSeconds += (now - this.since) / 1000;
    this.since = now;
  }
}
