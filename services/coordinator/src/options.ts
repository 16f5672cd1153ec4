import {
  ConfigError,
  byteSizeOption,
  DEFAULT_HOST,
  DEFAULT_SHUTDOWN_GRACE_MS,
  hostOption,
  isHostPort,
  oneOf,
  portOption,
  positiveInt,
} from "@tessera/core";
import { DEFAULT_NATS_PREFIX } from "@tessera/nats";
import { compileServedModels, type ServedModel, type ServedModelOptions } from "./served-models.js";
import { compileGenerateLimits, type GenerateLimits, type GenerateLimitsOptions } from "./api/limits.js";

/**
 * Every default of a coordinator, written once: compileCoordinatorOptions
 * applies them, the CLI shows them, and `maxTokens` / `topP` are the
 * defaults of a request's `max_tokens` / `top_p` when neither the prompt nor
 * the request sets them (0 = unset). Times in ms.
 */
export const COORDINATOR_DEFAULTS = Object.freeze({
  host: DEFAULT_HOST,
  port: 0,
  storageThresholdTokens: 4096,
  maxPrefillTokens: 4096,
  maxBatchSequences: 64,
  retryTimeoutMs: 30_000,
  stepDeadlineMs: 10_000,
  stepDeadlineFactor: 10,
  failoverMs: 3000,
  connectTimeoutMs: 5000,
  shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
  kvHeadGroups: 1,
  kvPlacement: "plan" as KvPlacementRule,
  natsPrefix: DEFAULT_NATS_PREFIX,
  jobConcurrency: 1,
  /** Largest file `POST /v1/files` takes: 200 MiB (OpenAI's batch input limit). */
  maxFileBytes: 200 * 1024 ** 2,
  tokenizeThreads: 1,
  /** A tenant's jobs store at most this many bytes (inputs + results): 4 GiB. */
  tenantMaxBytes: 4 * 1024 ** 3,
  /** A tenant has at most this many jobs queued or running. */
  tenantMaxJobs: 1000,
  /** An ended job's input, results and state are deleted this long after it ended: 30 days (OpenAI batch output's default expiry). */
  jobRetentionMs: 30 * 86_400_000,
  /** How often the retention sweep runs: 10 minutes. */
  jobSweepMs: 600_000,
  nodeHeartbeatMs: 1000,
  /** nodeLostAfterMs is this many nodeHeartbeatMs. */
  nodeLostAfterHeartbeats: 3,
  kubernetesLabelSelector: "app.kubernetes.io/part-of=tessera",
  /** DNS suffix of the node pods' names (with `kubernetes`). */
  kubernetesClusterDomain: "cluster.local",
  maxTokens: 256,
  topP: 0.9,
} as const);

/** The rules of {@link CoordinatorOptions.kvPlacement} (the `--kv-placement` flag's choices). */
export const KV_PLACEMENT_RULES = Object.freeze(["plan", "cheapest-first"] as const);
/** How sequences are spread over attention nodes; see {@link CoordinatorOptions.kvPlacement}. */
export type KvPlacementRule = (typeof KV_PLACEMENT_RULES)[number];

/** Options of a coordinator as a user gives them; see {@link compileCoordinatorOptions} for defaults. */
export interface CoordinatorOptions {
  /** @default "127.0.0.1" */
  host?: string;
  /** @default 0 (a free port) */
  port?: number;
  /**
   * host:port of each gpu-node. At least one, unless `nats` is set (then the
   * node registry supplies them and these stay members too).
   */
  gpuNodes?: readonly string[];
  /** host:port of each memory-node. */
  memoryNodes?: readonly string[];
  /** host:port of each storage-node. */
  storageNodes?: readonly string[];
  /**
   * The default model (served first: requests that name none get it), a
   * llama2.c checkpoint or Hugging Face folder the coordinator and the
   * gpu-nodes can read. @default none: the first of `models`
   */
  modelPath?: string;
  /** Tokenizer of every served model that gives none of its own. @default as `tessera run` picks (defaultTokenizerFor) */
  tokenizerPath?: string;
  /**
   * More models to serve, each `[NAME=]PATH[,tokenizer=PATH][,kv=...]` or
   * options (served-models.ts). Requests name a served model; no other
   * path is ever opened on a caller's behalf (admins included).
   * @default none
   */
  models?: readonly (string | ServedModelOptions)[];
  /**
   * With KV placement "auto", a sequence whose prompt + max tokens exceeds
   * this many positions gets its KV cache on a storage-node.
   * @default 4096
   */
  storageThresholdTokens?: number;
  /** Most prompt tokens prefilled in one step (longer batches are split into several prefill steps). @default 4096 */
  maxPrefillTokens?: number;
  /**
   * Most sequences in the running batch, over every job the coordinator
   * runs; the others join as running ones finish (continuous batching),
   * the waiting sequences of higher-priority (then older) jobs first.
   * @default 64
   */
  maxBatchSequences?: number;
  /** How long a step is retried while a node is unavailable, in ms. @default 30000 */
  retryTimeoutMs?: number;
  /**
   * Floor of a step's deadline, in ms: a Forward step gets
   * max(stepDeadlineMs, stepDeadlineFactor × the p99 of the job's answered
   * steps of its kind, prefill or decode), counted in time the coordinator
   * was running (a pause of its own does not count). A step past it marks
   * the stages that do not answer a health check lost, and is re-sent
   * when they are back, for up to `retryTimeoutMs`. Must cover the slowest
   * prefill step of `maxPrefillTokens` on the slowest gpu-node. @default 10000
   */
  stepDeadlineMs?: number;
  /** Multiple of the measured p99 step time a step's deadline is at least (see `stepDeadlineMs`). @default 10 */
  stepDeadlineFactor?: number;
  /**
   * How long a memory-node may keep failing before the coordinator marks it
   * lost and moves its sequences to other attention nodes (their KV cache
   * rebuilt there by prefilling prompt + tokens so far), in ms. A
   * storage-node's sequences wait up to `retryTimeoutMs` instead (their KV
   * survives a restart on disk). @default 3000
   */
  failoverMs?: number;
  /** How long a node may take to answer at the start of a job, in ms. @default 5000 */
  connectTimeoutMs?: number;
  /** Grace for in-flight calls at shutdown, in ms. @default 5000 */
  shutdownGraceMs?: number;
  /**
   * Each sequence's KV heads are split into this many contiguous groups,
   * each placed on its own attention node of the sequence's role when there
   * are enough (HeadInfer's head-wise split, Luo et al. 2025), so no node
   * needs a whole sequence's cache. Must divide the model's n_kv_heads (a
   * job whose model it does not divide fails INVALID_ARGUMENT). @default 1
   */
  kvHeadGroups?: number;
  /**
   * How sequences are spread over attention nodes: "plan" follows the job
   * plan's KV shares (packages/scheduler's planner: the most tokens/s per
   * $/h); "cheapest-first" puts each where its attention costs least per
   * decoded token (price / read bandwidth) among nodes with room, filling
   * the cheapest first (placeSequences without shares; the plan is still
   * made and reported). @default "plan"
   */
  kvPlacement?: KvPlacementRule;
  /**
   * NATS servers (comma-separated host:port, e.g. "127.0.0.1:4222"). When
   * set, the coordinator watches the node registry (KV bucket
   * `${natsPrefix}-nodes`) for its nodes, so node addresses above are
   * optional, and it pulls jobs. @default undefined (no NATS)
   */
  nats?: string;
  /**
   * Batch jobs (from NATS) this coordinator runs at once; one more may
   * start whose priority is above every running job's, so its sequences
   * join the running batch ahead of theirs. @default 1
   */
  jobConcurrency?: number;
  /**
   * Worker threads that tokenise prompts, off the event loop
   * (tokenize/tokenizer-pool.ts: tenants' tasks served round-robin, a
   * cancelled request's tasks stopped). @default 1
   */
  tokenizeThreads?: number;
  /**
   * Most bytes one tenant's jobs may store in the job queue (inputs plus
   * results); a tenant's SubmitJob past it is RESOURCE_EXHAUSTED naming its
   * usage (admins' submits are not limited). @default 4 GiB
   */
  tenantMaxBytes?: number;
  /** Most of one tenant's jobs queued or running; past it, as tenantMaxBytes. @default 1000 */
  tenantMaxJobs?: number;
  /**
   * An ended job (completed, failed or cancelled) is deleted — input,
   * results and state — this long after it ended, by the job worker's
   * sweep, in ms. @default 30 days
   */
  jobRetentionMs?: number;
  /** How often the job worker's retention sweep runs, in ms. @default 600000 (10 min) */
  jobSweepMs?: number;
  /** Prefix of every NATS name (buckets, streams, subjects). @default "tessera" */
  natsPrefix?: string;
  /** The nodes' registry heartbeat period, in ms (with `nats`). @default 1000 */
  nodeHeartbeatMs?: number;
  /**
   * A registered node with no heartbeat for this long is marked lost (its
   * sequences move, as when its calls fail), in ms (with `nats`).
   * @default 3 × nodeHeartbeatMs
   */
  nodeLostAfterMs?: number;
  /**
   * Discover node pods on Kubernetes (discovery/k8s-discovery.ts): a label selector,
   * or true for "app.kubernetes.io/part-of=tessera". Ready pods are
   * members, as registered nodes are with `nats`. @default undefined (off)
   */
  kubernetes?: string | boolean;
  /** Namespace of the node pods (with `kubernetes`). @default the kubeconfig's (in-cluster: the pod's) */
  kubernetesNamespace?: string;
  /** DNS suffix of the node pods' stable names (with `kubernetes`). @default "cluster.local" */
  kubernetesClusterDomain?: string;
  /**
   * Tokens file (YAML or JSON, see auth.ts): callers must send a bearer
   * token from it, each token is a tenant, and tenants see only their own
   * jobs. With TLS the port then asks no client certificate (the token is
   * the credential). @default undefined: no tokens; with TLS, clients need
   * a certificate the CA signed, and every caller is an admin
   */
  tokensFile?: string;
  /** What one job may ask for (prompts, prompt bytes, max_tokens, request bytes), checked at Generate. @default {@link defaultGenerateLimits} */
  limits?: GenerateLimitsOptions;
  /** Largest file `POST /v1/files` stores, in bytes (over it: 413). @default 200 MiB */
  maxFileBytes?: number;
  /** Log sink. @default stderr */
  log?: (line: string) => void;
}

/** Validated, defaulted, frozen coordinator options. */
export type CompiledCoordinatorOptions = Readonly<
  Required<
    Omit<
      CoordinatorOptions,
      | "modelPath"
      | "tokenizerPath"
      | "models"
      | "nats"
      | "limits"
      | "tokensFile"
      | "kubernetes"
      | "kubernetesNamespace"
      | "kubernetesClusterDomain"
    >
  >
> & {
  readonly limits: GenerateLimits;
  /** The served models, the default first (empty: every request fails FAILED_PRECONDITION). */
  readonly models: readonly ServedModel[];
  readonly nats: string | undefined;
  readonly tokensFile: string | undefined;
  /** Label selector of the node pods; undefined: no Kubernetes discovery. */
  readonly kubernetes: string | undefined;
  readonly kubernetesNamespace: string | undefined;
  readonly kubernetesClusterDomain: string | undefined;
};

/**
 * Applies defaults and validates once, at construction (Temporal's
 * `compileWorkerOptions` pattern).
 * @throws ConfigError naming the option when a value is invalid.
 */
export function compileCoordinatorOptions(o: CoordinatorOptions): CompiledCoordinatorOptions {
  const addresses = (name: string, list: readonly string[] | undefined) => {
    for (const a of list ?? []) if (!isHostPort(a)) throw new ConfigError(name, `"${a}" is not host:port`);
    return Object.freeze([...(list ?? [])]);
  };
  const nats = o.nats === undefined || o.nats.trim() === "" ? undefined : o.nats.trim();
  const kubernetes =
    o.kubernetes === true || o.kubernetes === "true"
      ? COORDINATOR_DEFAULTS.kubernetesLabelSelector
      : o.kubernetes === false || o.kubernetes === ""
        ? undefined
        : o.kubernetes;
  // Nodes come from a discovery service: the address lists may be empty.
  const discovered = nats !== undefined || kubernetes !== undefined;
  const natsPrefix = o.natsPrefix ?? COORDINATOR_DEFAULTS.natsPrefix;
  if (!/^[A-Za-z0-9_-]+$/.test(natsPrefix)) {
    throw new ConfigError("natsPrefix", `must be letters, digits, "_" or "-", got ${JSON.stringify(natsPrefix)}`);
  }
  const gpuNodes = addresses("gpuNodes", o.gpuNodes);
  if (gpuNodes.length === 0 && !discovered) {
    throw new ConfigError(
      "gpuNodes",
      "at least one gpu-node address is needed (or give nats for the node registry, or kubernetes)",
    );
  }
  const memoryNodes = addresses("memoryNodes", o.memoryNodes);
  const storageNodes = addresses("storageNodes", o.storageNodes);
  if (memoryNodes.length + storageNodes.length === 0 && !discovered) {
    throw new ConfigError(
      "memoryNodes",
      "at least one memory-node or storage-node address is needed (or give nats for the node registry, or kubernetes)",
    );
  }
  return Object.freeze({
    host: hostOption(o.host, "host", COORDINATOR_DEFAULTS.host),
    port: portOption(o.port, "port", COORDINATOR_DEFAULTS.port),
    gpuNodes,
    memoryNodes,
    storageNodes,
    models: compileServedModels(o),
    storageThresholdTokens: positiveInt(
      "storageThresholdTokens",
      o.storageThresholdTokens,
      COORDINATOR_DEFAULTS.storageThresholdTokens,
    ),
    maxPrefillTokens: positiveInt("maxPrefillTokens", o.maxPrefillTokens, COORDINATOR_DEFAULTS.maxPrefillTokens),
    maxBatchSequences: positiveInt("maxBatchSequences", o.maxBatchSequences, COORDINATOR_DEFAULTS.maxBatchSequences),
    retryTimeoutMs: positiveInt("retryTimeoutMs", o.retryTimeoutMs, COORDINATOR_DEFAULTS.retryTimeoutMs),
    stepDeadlineMs: positiveInt("stepDeadlineMs", o.stepDeadlineMs, COORDINATOR_DEFAULTS.stepDeadlineMs),
    stepDeadlineFactor: positiveInt(
      "stepDeadlineFactor",
      o.stepDeadlineFactor,
      COORDINATOR_DEFAULTS.stepDeadlineFactor,
    ),
    failoverMs: positiveInt("failoverMs", o.failoverMs, COORDINATOR_DEFAULTS.failoverMs),
    connectTimeoutMs: positiveInt("connectTimeoutMs", o.connectTimeoutMs, COORDINATOR_DEFAULTS.connectTimeoutMs),
    shutdownGraceMs: positiveInt("shutdownGraceMs", o.shutdownGraceMs, COORDINATOR_DEFAULTS.shutdownGraceMs),
    kvHeadGroups: positiveInt("kvHeadGroups", o.kvHeadGroups, COORDINATOR_DEFAULTS.kvHeadGroups),
    kvPlacement: oneOf("kvPlacement", o.kvPlacement, KV_PLACEMENT_RULES, COORDINATOR_DEFAULTS.kvPlacement),
    limits: compileGenerateLimits(o.limits),
    nats,
    tokensFile: o.tokensFile,
    kubernetes,
    kubernetesNamespace: o.kubernetesNamespace,
    kubernetesClusterDomain: o.kubernetesClusterDomain,
    natsPrefix,
    jobConcurrency: positiveInt("jobConcurrency", o.jobConcurrency, COORDINATOR_DEFAULTS.jobConcurrency),
    tokenizeThreads: positiveInt("tokenizeThreads", o.tokenizeThreads, COORDINATOR_DEFAULTS.tokenizeThreads),
    tenantMaxBytes: byteSizeOption("tenantMaxBytes", o.tenantMaxBytes, COORDINATOR_DEFAULTS.tenantMaxBytes, 1),
    maxFileBytes: byteSizeOption("maxFileBytes", o.maxFileBytes, COORDINATOR_DEFAULTS.maxFileBytes, 1),
    tenantMaxJobs: positiveInt("tenantMaxJobs", o.tenantMaxJobs, COORDINATOR_DEFAULTS.tenantMaxJobs),
    jobRetentionMs: positiveInt("jobRetentionMs", o.jobRetentionMs, COORDINATOR_DEFAULTS.jobRetentionMs),
    jobSweepMs: positiveInt("jobSweepMs", o.jobSweepMs, COORDINATOR_DEFAULTS.jobSweepMs),
    nodeHeartbeatMs: positiveInt("nodeHeartbeatMs", o.nodeHeartbeatMs, COORDINATOR_DEFAULTS.nodeHeartbeatMs),
    nodeLostAfterMs: positiveInt(
      "nodeLostAfterMs",
      o.nodeLostAfterMs,
      COORDINATOR_DEFAULTS.nodeLostAfterHeartbeats * (o.nodeHeartbeatMs ?? COORDINATOR_DEFAULTS.nodeHeartbeatMs),
    ),
    log: o.log ?? ((line: string) => process.stderr.write(line + "\n")),
  });
}
