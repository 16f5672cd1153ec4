/**
 * The serving metrics routers and dashboards read (issue 14), per served
 * model (label `model_name`, served-models.ts), named as vLLM's
 * (vllm/v1/metrics/loggers.py) with the prefix `tessera_` for `vllm:`, so
 * the vLLM Grafana dashboards and a Gateway API Inference Extension
 * endpoint picker work with a prefix change. The OpenTelemetry Prometheus
 * exporter turns every character outside [a-zA-Z0-9_] into "_" (a ":" too)
 * and adds `_total` to counters, so the instrument `tessera.prompt_tokens`
 * is scraped as `tessera_prompt_tokens_total`.
 *
 * A request is one prompt (vLLM's request), counted from the moment
 * Generate accepts its batch (gRPC, a stored job, HTTP alike: all run
 * Generate) until it finishes:
 *
 * - `tessera_num_requests_running`: admitted into the running batch (its
 *   KV cache opening or open) and not finished;
 * - `tessera_num_requests_waiting`: accepted and not (or no longer, after a
 *   move) admitted: tokenising, waiting for a gpu-node's lease, for a place
 *   in the batch or for KV capacity;
 * - `tessera_kv_cache_usage_perc`: bytes of KV cache this coordinator's
 *   open sequences of the model hold (OpenSequence's reserved_bytes) over
 *   the capacity of the memory- and storage-nodes up (their Info's
 *   capacity_bytes, as last surveyed), 0 to 1;
 * - `tessera_prompt_tokens_total`: prompt tokens prefilled (counted once
 *   per request, when its first token is sampled);
 * - `tessera_generation_tokens_total`: tokens sampled into completions (an
 *   EOS/BOS that stops a request is not one);
 * - `tessera_request_success_total{finished_reason}`: requests finished,
 *   by stop, length, abort (the job cancelled) or error;
 * - histograms (seconds, vLLM's buckets): `tessera_request_queue_time_seconds`
 *   (accepted to first admitted), `tessera_time_to_first_token_seconds`
 *   (accepted to first token sampled), `tessera_inter_token_latency_seconds`
 *   (between a request's completion tokens; also as vLLM's older name
 *   `tessera_time_per_output_token_seconds`), `tessera_e2e_request_latency_seconds`
 *   (accepted to finished, every finished request); and per request the
 *   vLLM token histograms `tessera_request_prompt_tokens` and
 *   `tessera_request_generation_tokens` (each request the engine finished).
 */
import type { ObservableGauge } from "@opentelemetry/api";
import { lazyInstruments } from "@tessera/telemetry";
import { SequenceState, type FinishReason, type Sequence } from "./engine/sequence.js";

/** `finished_reason` values, as vLLM's FinishReason (stop, length, abort, error). */
export type FinishedReason = FinishReason | "abort";
const REASONS: readonly FinishedReason[] = ["stop", "length", "abort", "error"];

/** vLLM's time-to-first-token buckets (s). */
const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560,
];
/** vLLM's inter-token latency buckets (s). */
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
/** vLLM's request latency buckets (s): end-to-end and queue time. */
const REQUEST_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

/** vLLM's token-count buckets (build_1_2_5_buckets), up to a million tokens. */
const TOKEN_BUCKETS = [1, 10, 100, 1000, 10000, 100000].flatMap((b) => [b, 2 * b, 5 * b]).concat([1000000]);

/** Models whose series read 0 before (and between) their requests: every coordinator's served names. */
const servedNames = new Set<string>();
/** Requests accepted and not ended, of every Generate of this process. */
const active = new Set<RequestTracker>();
/** KV capacity in bytes of each memory- or storage-node, by address, as its Info last said. */
const kvCapacity = new Map<string, number>();

const instruments = lazyInstruments("@tessera/coordinator", (meter) => {
  const gauge = (name: string, description: string, unit: string): ObservableGauge =>
    meter.createObservableGauge(name, { description, unit });
  const running = gauge("tessera.num_requests_running", "Requests admitted into the running batch", "{request}");
  const waiting = gauge("tessera.num_requests_waiting", "Requests accepted and waiting to be admitted", "{request}");
  const kvUsage = gauge(
    "tessera.kv_cache_usage_perc",
    "KV-cache usage: bytes held by this coordinator's open sequences over the KV nodes' capacity; 1 means 100 percent",
    "1",
  );
  meter.addBatchObservableCallback(
    (r) => {
      for (const [model, g] of gaugeValues()) {
        const attributes = { model_name: model };
        r.observe(running, g.running, attributes);
        r.observe(waiting, g.waiting, attributes);
        if (g.kvUsage !== undefined) r.observe(kvUsage, g.kvUsage, attributes);
      }
    },
    [running, waiting, kvUsage],
  );
  const histogram = (name: string, description: string, buckets: number[]) =>
    meter.createHistogram(name, { description, unit: "s", advice: { explicitBucketBoundaries: buckets } });
  const made = {
    promptTokens: meter.createCounter("tessera.prompt_tokens", {
      description: "Prompt tokens prefilled (once per request)",
      unit: "{token}",
    }),
    generationTokens: meter.createCounter("tessera.generation_tokens", {
      description: "Completion tokens sampled",
      unit: "{token}",
    }),
    success: meter.createCounter("tessera.request_success", {
      description: "Requests finished, by finished_reason (stop, length, abort, error)",
      unit: "{request}",
    }),
    queue: histogram("tessera.request_queue_time_seconds", "Seconds from accepted to first admitted", REQUEST_BUCKETS),
    ttft: histogram("tessera.time_to_first_token_seconds", "Seconds from accepted to first token", TTFT_BUCKETS),
    itl: histogram("tessera.inter_token_latency_seconds", "Seconds between a request's tokens", ITL_BUCKETS),
    // vLLM's name for the same before 0.11, still in many dashboards.
    tpot: histogram(
      "tessera.time_per_output_token_seconds",
      "Seconds between a request's tokens (as inter_token_latency)",
      ITL_BUCKETS,
    ),
    requestPromptTokens: meter.createHistogram("tessera.request_prompt_tokens", {
      description: "Prompt tokens of each finished request",
      unit: "{token}",
      advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
    }),
    requestGenerationTokens: meter.createHistogram("tessera.request_generation_tokens", {
      description: "Completion tokens of each finished request",
      unit: "{token}",
      advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
    }),
    e2e: histogram("tessera.e2e_request_latency_seconds", "Seconds from accepted to finished", REQUEST_BUCKETS),
  };
  // The counters' series exist (at 0) for every served model, as vLLM's do.
  for (const model of servedNames) zeroCounters(made, model);
  return made;
});

type Instruments = ReturnType<typeof instruments>;

function zeroCounters(i: Instruments, model: string): void {
  i.promptTokens.add(0, { model_name: model });
  i.generationTokens.add(0, { model_name: model });
  for (const reason of REASONS) i.success.add(0, { model_name: model, finished_reason: reason });
}

/** The gauges of each model now: requests running and waiting, and KV usage (undefined: capacity unknown). */
function gaugeValues(): Map<string, { running: number; waiting: number; kvUsage: number | undefined }> {
  const out = new Map<string, { running: number; waiting: number; bytes: number; nodes: Set<string> }>();
  const of = (model: string) => {
    let g = out.get(model);
    if (!g) out.set(model, (g = { running: 0, waiting: 0, bytes: 0, nodes: new Set() }));
    return g;
  };
  for (const model of servedNames) of(model);
  for (const t of active) {
    const g = of(t.model);
    const c = t.counts();
    g.running += c.running;
    g.waiting += c.waiting;
    g.bytes += c.kvBytes;
    for (const a of t.kvNodes()) g.nodes.add(a);
  }
  return new Map(
    [...out].map(([model, g]) => {
      const capacity = [...g.nodes].reduce((sum, a) => sum + (kvCapacity.get(a) ?? 0), 0);
      const kvUsage = g.bytes === 0 ? 0 : capacity > 0 ? g.bytes / capacity : undefined;
      return [model, { running: g.running, waiting: g.waiting, kvUsage }];
    }),
  );
}

/**
 * Shows `models` (served names) in the serving metrics from now on: their
 * gauges read 0 and their counters exist at 0 before any request.
 */
export function serveModelMetrics(models: readonly string[]): void {
  const i = instruments();
  for (const m of models) {
    if (servedNames.has(m)) continue;
    servedNames.add(m);
    zeroCounters(i, m);
  }
}

/** Notes a memory- or storage-node's KV capacity (its Info's capacity_bytes) for `tessera_kv_cache_usage_perc`. */
export function noteKvCapacity(address: string, capacityBytes: number): void {
  kvCapacity.set(address, capacityBytes);
}

/** What {@link trackRequests} needs. */
export interface TrackRequestsOptions {
  /** The served model's name (the `model_name` label). */
  model: string;
  /** Prompts of the batch: each a request. */
  prompts: number;
  /** The job's signal: an "error" finish after it aborted is an "abort". */
  signal: AbortSignal;
  /** Addresses of the memory- and storage-nodes up now (the KV usage's denominator). */
  kvNodes(): readonly string[];
}

/**
 * One Generate's requests (its prompts) in the serving metrics, from
 * acceptance until {@link RequestTracker.end}. The engine calls it as
 * sequences are admitted, sample tokens and finish.
 */
export class RequestTracker {
  readonly model: string;
  readonly kvNodes: () => readonly string[];
  private readonly prompts: number;
  private readonly signal: AbortSignal;
  private readonly arrivedAt = performance.now();
  /** The engine's sequences, once it has them (see attach). */
  private seqs: readonly Sequence[] = [];
  private finishedCount = 0;
  private ended = false;

  constructor(o: TrackRequestsOptions) {
    this.model = o.model;
    this.prompts = o.prompts;
    this.signal = o.signal;
    this.kvNodes = o.kvNodes;
  }

  /** The engine's sequences of the batch (job.seqs, filled as prompts are tokenised): read at each scrape. */
  attach(seqs: readonly Sequence[]): void {
    this.seqs = seqs;
  }

  /** `s` is admitted into the running batch: its queue time, the first time. */
  admitted(s: Sequence): void {
    if (s.admittedAt !== undefined) return;
    s.admittedAt = performance.now();
    instruments().queue.record((s.admittedAt - this.arrivedAt) / 1000, { model_name: this.model });
  }

  /**
   * `s` sampled a token at `now` (performance.now()), `generated` when it
   * joined the completion (not an EOS/BOS that stops it): the first gives
   * the time to first token and counts the prompt's tokens; a completion
   * token after another gives an inter-token latency.
   */
  sampled(s: Sequence, now: number, generated: boolean): void {
    const i = instruments();
    const attributes = { model_name: this.model };
    if (s.firstTokenAt === undefined) {
      i.ttft.record((now - this.arrivedAt) / 1000, attributes);
      i.promptTokens.add(s.promptIds.length, attributes);
    }
    if (!generated) return;
    i.generationTokens.add(1, attributes);
    if (s.lastTokenAt !== undefined) {
      const seconds = (now - s.lastTokenAt) / 1000;
      i.itl.record(seconds, attributes);
      i.tpot.record(seconds, attributes);
    }
    s.lastTokenAt = now;
  }

  /** `s` finished with `reason` (once per sequence): its end-to-end latency and finished_reason. */
  finished(s: Sequence, reason: FinishReason): void {
    if (this.ended) return;
    this.finishedCount++;
    this.count(reason === "error" && this.signal.aborted ? "abort" : reason, 1);
    const i = instruments();
    i.requestPromptTokens.record(s.promptIds.length, { model_name: this.model });
    i.requestGenerationTokens.record(s.generated.length, { model_name: this.model });
  }

  /**
   * The Generate is over: requests that did not finish (the job cancelled:
   * "abort"; it failed before or in the engine: "error") are counted
   * finished now, and the batch leaves the gauges. Idempotent.
   */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    active.delete(this);
    const left = this.prompts - this.finishedCount;
    if (left > 0) this.count(this.signal.aborted ? "abort" : "error", left);
  }

  private count(reason: FinishedReason, n: number): void {
    const i = instruments();
    i.success.add(n, { model_name: this.model, finished_reason: reason });
    const seconds = (performance.now() - this.arrivedAt) / 1000;
    for (let k = 0; k < n; k++) i.e2e.record(seconds, { model_name: this.model });
  }

  /** Requests running and waiting now, and the KV bytes their open shards hold. */
  counts(): { running: number; waiting: number; kvBytes: number } {
    let running = 0;
    let finished = 0;
    let kvBytes = 0;
    for (const s of this.seqs) {
      if (s.state === SequenceState.Finished) finished++;
      else if (
        s.state === SequenceState.Opening ||
        s.state === SequenceState.Running ||
        s.state === SequenceState.WaitingForNode
      ) {
        running++;
      }
      for (const sh of s.shards) if (sh.opened) kvBytes += sh.reservedBytes ?? 0;
    }
    return { running, waiting: Math.max(0, this.prompts - finished - running), kvBytes };
  }
}

/**
 * Starts counting a Generate's `prompts` requests of `model` (running,
 * waiting, and the rest of the file comment); call `end()` when the
 * Generate returns or throws.
 */
export function trackRequests(o: TrackRequestsOptions): RequestTracker {
  instruments();
  const t = new RequestTracker(o);
  active.add(t);
  return t;
}
