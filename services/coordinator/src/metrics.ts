/**
 * The coordinator's metrics (issue 6), recorded through `@opentelemetry/api`
 * and served by the process's Prometheus endpoint when one is started
 * (`startMetrics` of @tessera/telemetry, TESSERA_METRICS_PORT); no-ops
 * otherwise. Prometheus names:
 *
 * - `tessera_tokens_generated_total`: completion tokens sampled (rate() = tokens/s);
 * - `tessera_step_duration_seconds{tessera_stage="prefill"|"decode"}`:
 *   coordinator -> gpu-node step round trips;
 * - `tessera_batch_slots_in_use` / `tessera_batch_slots_capacity`: sequences
 *   in the running batch, and its limit (--max-batch);
 * - `tessera_jobs_queued{tessera_priority}` / `tessera_jobs_running{tessera_priority}`:
 *   jobs waiting in the NATS work queue (the priority's consumer's
 *   num_pending), and jobs this coordinator's worker runs now;
 * - `tessera_tokenize_tasks{tessera_state="queued"|"running"}`: prompt
 *   tokenising tasks waiting for, and running on, the tokeniser pool's threads;
 * - `tessera_job_dollars_per_million_tokens`: per finished job, the plan's
 *   $/h x the job's wall time / its completion tokens (jobs on nodes of
 *   unknown price are not recorded); a histogram, so per-job ids add no series.
 */
import type { BatchObservableResult, ObservableResult } from "@opentelemetry/api";
import { LATENCY_BUCKETS_SECONDS, lazyInstruments } from "@tessera/telemetry";
import type { BatchSlots } from "./batch-slots.js";

/** Batch slots of the running batches (one BatchSlots per coordinator), with how many batches hold each. */
const activeSlots = new Map<BatchSlots, number>();

const instruments = lazyInstruments("@tessera/coordinator", (meter) => {
  const slotsInUse = meter.createObservableGauge("tessera.batch.slots_in_use", {
    description: "Sequences in the coordinator's running batch",
    unit: "{sequence}",
  });
  const slotsCapacity = meter.createObservableGauge("tessera.batch.slots_capacity", {
    description: "Most sequences the running batch may hold (--max-batch)",
    unit: "{sequence}",
  });
  meter.addBatchObservableCallback(
    (r) => {
      let running = 0;
      let capacity = 0;
      for (const s of activeSlots.keys()) {
        running += s.running;
        capacity += s.capacity;
      }
      r.observe(slotsInUse, running);
      if (activeSlots.size > 0) r.observe(slotsCapacity, capacity);
    },
    [slotsInUse, slotsCapacity],
  );
  return {
    meter,
    jobsQueued: meter.createObservableGauge("tessera.jobs.queued", {
      description: "Jobs waiting in the NATS work queue, by priority (the consumer's num_pending)",
      unit: "{job}",
    }),
    tokenizeTasks: meter.createObservableGauge("tessera.tokenize.tasks", {
      description: "Prompt tokenising tasks of the tokeniser pool, by state (queued or running)",
      unit: "{task}",
    }),
    jobsRunning: meter.createObservableGauge("tessera.jobs.running", {
      description: "Jobs this coordinator's job worker runs now, by priority",
      unit: "{job}",
    }),
    tokens: meter.createCounter("tessera.tokens.generated", {
      description: "Completion tokens sampled by this coordinator; rate() gives tokens/s",
      unit: "{token}",
    }),
    step: meter.createHistogram("tessera.step.duration_seconds", {
      description: "Coordinator -> gpu-node step round trip, by stage (prefill or decode)",
      unit: "s",
      advice: { explicitBucketBoundaries: [...LATENCY_BUCKETS_SECONDS] },
    }),
    cost: meter.createHistogram("tessera.job.dollars_per_million_tokens", {
      description: "Per finished job: $/h of the plan's nodes x wall seconds / completion tokens, per million",
      unit: "USD/{Mtoken}",
      advice: { explicitBucketBoundaries: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000] },
    }),
  };
});

/** Counts `n` completion tokens sampled. */
export function recordTokens(n: number): void {
  instruments().tokens.add(n);
}

/** Records one step round trip of `seconds`, a prefill or a decode step. */
export function recordStep(decode: boolean, seconds: number): void {
  instruments().step.record(seconds, { "tessera.stage": decode ? "decode" : "prefill" });
}

/**
 * Records a finished job's $ per million completion tokens: `pricePerHour`
 * (the plan's nodes, $/h) x `wallSeconds` / `completionTokens` x 1e6.
 * Nothing when the price is unknown (0) or no token was generated.
 */
export function recordJobCost(pricePerHour: number, wallSeconds: number, completionTokens: number): void {
  if (!(pricePerHour > 0) || !(completionTokens > 0)) return;
  instruments().cost.record(((pricePerHour / 3600) * wallSeconds * 1e6) / completionTokens);
}

/** Shows `slots` in the batch-slot gauges while a batch runs; call the returned function when it ends. */
export function watchSlots(slots: BatchSlots): () => void {
  instruments();
  activeSlots.set(slots, (activeSlots.get(slots) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const n = (activeSlots.get(slots) ?? 1) - 1;
    if (n > 0) activeSlots.set(slots, n);
    else activeSlots.delete(slots);
  };
}

/**
 * Shows a job worker's queue in the job gauges until the returned function
 * is called: `queued(priority)` is asked at each scrape (undefined: not
 * known now, no point), `running()` lists the priorities of the jobs it runs.
 */
export function watchJobQueue(
  priorities: readonly string[],
  queued: (priority: string) => Promise<number | undefined>,
  running: () => Iterable<string>,
): () => void {
  const { meter, jobsQueued, jobsRunning } = instruments();
  const callback = async (r: BatchObservableResult) => {
    const counts = new Map(priorities.map((p) => [p, 0]));
    for (const p of running()) counts.set(p, (counts.get(p) ?? 0) + 1);
    for (const [p, n] of counts) r.observe(jobsRunning, n, { "tessera.priority": p });
    const depths = await Promise.all(priorities.map((p) => queued(p).catch(() => undefined)));
    priorities.forEach((p, i) => {
      const n = depths[i];
      if (n !== undefined) r.observe(jobsQueued, n, { "tessera.priority": p });
    });
  };
  meter.addBatchObservableCallback(callback, [jobsQueued, jobsRunning]);
  return () => meter.removeBatchObservableCallback(callback, [jobsQueued, jobsRunning]);
}

/**
 * Shows a tokeniser pool's tasks in `tessera_tokenize_tasks` until the
 * returned function is called; `stats()` is asked at each scrape.
 */
export function watchTokenizer(stats: () => { queued: number; running: number }): () => void {
  const { tokenizeTasks } = instruments();
  const callback = (r: ObservableResult) => {
    const { queued, running } = stats();
    r.observe(queued, { "tessera.state": "queued" });
    r.observe(running, { "tessera.state": "running" });
  };
  tokenizeTasks.addCallback(callback);
  return () => tokenizeTasks.removeCallback(callback);
}
