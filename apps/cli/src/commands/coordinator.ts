/**
 * `tessera coordinator`: the coordinator's flags (every one with its
 * TESSERA_* variable) and their mapping onto runCoordinator's options.
 */
import { Option, type Command, type OptionValues } from "commander";
import { ROLES, formatByteSize, formatDuration } from "@tessera/core";
import { COORDINATOR_DEFAULTS, KV_PLACEMENT_RULES, defaultGenerateLimits } from "@tessera/coordinator";
import { duration, int, list, metricsPort, natsAuthFlags, natsPrefix, security, size, transport } from "../flags.js";

/** The coordinator's defaults (its options module's, written once there). */
const D = COORDINATOR_DEFAULTS;
/** The request limits' defaults (api/limits.ts), sizes in bytes. */
const L = defaultGenerateLimits;

/** Adds `tessera coordinator` to `program`. */
export function addCoordinatorCommand(program: Command): void {
  const c = natsAuthFlags(transport(program.command(ROLES.coordinator.cli), "service"));
  serviceFlags(c);
  discoveryAndLimitFlags(c);
  jobStoreFlags(c);
  c.action(coordinatorAction);
}

/** Where the coordinator listens, its nodes and model, batching, KV placement and failover. */
function serviceFlags(c: Command): void {
  c.addOption(metricsPort())
    .description("Start a coordinator that drives the given nodes.")
    .addOption(new Option("--host <host>", "address to listen on").default(D.host).env("TESSERA_HOST"))
    .addOption(
      new Option("--port <port>", "port (0 = free port)")
        .argParser(int("--port"))
        .default(ROLES.coordinator.defaultPort)
        .env("TESSERA_PORT"),
    )
    .addOption(
      new Option(
        "--http-port <port>",
        "serve the OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions, /health) on " +
          "this port, on --host, over TLS with the --tls-cert (0 = free port; default: no HTTP API)",
      )
        .argParser(int("--http-port"))
        .env("TESSERA_HTTP_PORT"),
    )
    .addOption(
      new Option("--gpu-node <host:port>", "gpu-node address (repeatable or comma-separated)")
        .argParser(list)
        .env("TESSERA_GPU_NODES"),
    )
    .addOption(
      new Option("--memory-node <host:port>", "memory-node address (repeatable)")
        .argParser(list)
        .env("TESSERA_MEMORY_NODES"),
    )
    .addOption(
      new Option("--storage-node <host:port>", "storage-node address (repeatable)")
        .argParser(list)
        .env("TESSERA_STORAGE_NODES"),
    )
    .addOption(
      new Option(
        "--model <[name=]path[,tokenizer=path][,kv=auto|memory|storage]>",
        "a model to serve (repeatable; the first is the default): requests name it (default name: the file's name " +
          "without its extension, or the folder's); no other path is opened for a caller",
      )
        .argParser((v: string, prev: string[] = []) => [...prev, v])
        .env("TESSERA_MODEL"),
    )
    .addOption(
      new Option("--tokenizer <path>", "tokenizer of each --model that gives none (default: as tessera run picks)").env(
        "TESSERA_TOKENIZER",
      ),
    )
    .addOption(
      new Option("--storage-threshold <tokens>", "KV to a storage-node above this many positions (kv auto)")
        .argParser(int("--storage-threshold", 1))
        .default(D.storageThresholdTokens)
        .env("TESSERA_STORAGE_THRESHOLD"),
    )
    .addOption(
      new Option(
        "--max-batch <n>",
        "most sequences in the running batch, over all jobs (others join as they finish, higher-priority jobs first)",
      )
        .argParser(int("--max-batch", 1))
        .default(D.maxBatchSequences)
        .env("TESSERA_MAX_BATCH"),
    )
    .addOption(
      new Option("--max-prefill-tokens <n>", "most prompt tokens prefilled in one step")
        .argParser(int("--max-prefill-tokens", 1))
        .default(D.maxPrefillTokens)
        .env("TESSERA_MAX_PREFILL_TOKENS"),
    )
    .addOption(
      new Option("--retry-timeout <ms>", "how long a step is retried while a node is down")
        .argParser(int("--retry-timeout", 1))
        .default(D.retryTimeoutMs)
        .env("TESSERA_RETRY_TIMEOUT"),
    )
    .addOption(
      new Option(
        "--step-deadline <ms>",
        "floor of a step's deadline (a step gets max(this, --step-deadline-factor x the job's p99 step time)); " +
          "a gpu-node past it is marked lost until it answers again",
      )
        .argParser(int("--step-deadline", 1))
        .default(D.stepDeadlineMs)
        .env("TESSERA_STEP_DEADLINE"),
    )
    .addOption(
      new Option("--step-deadline-factor <k>", "a step's deadline is at least k x the job's p99 step time")
        .argParser(int("--step-deadline-factor", 1))
        .default(D.stepDeadlineFactor)
        .env("TESSERA_STEP_DEADLINE_FACTOR"),
    )
    .addOption(
      new Option(
        "--kv-head-groups <n>",
        "split each sequence's KV heads into this many groups on distinct attention nodes (HeadInfer; must divide n_kv_heads)",
      )
        .argParser(int("--kv-head-groups", 1))
        .default(D.kvHeadGroups)
        .env("TESSERA_KV_HEAD_GROUPS"),
    )
    .addOption(
      new Option(
        "--kv-placement <rule>",
        "plan: sequences follow the job plan's KV shares (most tokens/s per $/h); cheapest-first: each where its " +
          "attention costs least per token, filling the cheapest node first",
      )
        .choices(KV_PLACEMENT_RULES)
        .default(D.kvPlacement)
        .env("TESSERA_KV_PLACEMENT"),
    )
    .addOption(
      new Option(
        "--failover <ms>",
        "how long a memory-node may fail before its sequences move to other attention nodes (KV rebuilt there)",
      )
        .argParser(int("--failover", 1))
        .default(D.failoverMs)
        .env("TESSERA_FAILOVER"),
    )
    .addOption(
      new Option(
        "--tokenize-threads <n>",
        "worker threads that tokenise prompts off the event loop (tenants served in turn)",
      )
        .argParser(int("--tokenize-threads", 1))
        .default(D.tokenizeThreads)
        .env("TESSERA_TOKENIZE_THREADS"),
    );
}

/** NATS, Kubernetes discovery, bearer tokens and the request limits. */
function discoveryAndLimitFlags(c: Command): void {
  c.addOption(
    new Option(
      "--nats <servers>",
      "NATS servers (comma-separated host:port): take nodes from the node registry (node addresses become optional)",
    ).env("TESSERA_NATS"),
  )
    .addOption(natsPrefix())
    .addOption(
      new Option(
        "--job-concurrency <n>",
        "batch jobs run at once (with --nats); one more may start whose priority is above every running job's: " +
          "its sequences join the running batch first",
      )
        .argParser(int("--job-concurrency", 1))
        .default(D.jobConcurrency)
        .env("TESSERA_JOB_CONCURRENCY"),
    )
    .addOption(
      new Option("--node-lost-after <ms>", "a registered node with no heartbeat for this long is lost (with --nats)")
        .argParser(int("--node-lost-after", 1))
        .default(D.nodeLostAfterHeartbeats * D.nodeHeartbeatMs)
        .env("TESSERA_NODE_LOST_AFTER"),
    )
    .addOption(
      new Option(
        "--kubernetes [selector]",
        "discover node pods on Kubernetes by label (list + watch; in-cluster or KUBECONFIG); default selector " +
          D.kubernetesLabelSelector,
      ).env("TESSERA_KUBERNETES"),
    )
    .addOption(
      new Option("--kubernetes-namespace <ns>", "namespace of the node pods (with --kubernetes)").env("POD_NAMESPACE"),
    )
    .addOption(
      new Option("--kubernetes-cluster-domain <domain>", "DNS suffix of the node pods' names (with --kubernetes)")
        .default(D.kubernetesClusterDomain)
        .env("TESSERA_CLUSTER_DOMAIN"),
    )
    .addOption(
      new Option(
        "--tokens <file>",
        "bearer tokens (YAML: tokens: [{tenant, sha256 | token, admin}]; `tessera token` makes one): callers must " +
          "send one, and each tenant sees only its own jobs",
      ).env("TESSERA_TOKENS_FILE"),
    )
    .addOption(
      new Option("--limit-prompts <n>", "most prompts in one job")
        .argParser(int("--limit-prompts", 1))
        .default(L.maxPrompts),
    )
    .addOption(
      new Option("--limit-prompt-bytes <bytes>", "most bytes of one prompt's text, e.g. 64KiB")
        .argParser(size("--limit-prompt-bytes"))
        .default(L.maxPromptBytes, formatByteSize(L.maxPromptBytes)),
    )
    .addOption(
      new Option("--limit-max-tokens <n>", "largest max_tokens a job may ask for")
        .argParser(int("--limit-max-tokens", 1))
        .default(L.maxTokens),
    )
    .addOption(
      new Option("--limit-request-bytes <bytes>", "most bytes of one Generate request, e.g. 64MiB")
        .argParser(size("--limit-request-bytes"))
        .default(L.maxRequestBytes, formatByteSize(L.maxRequestBytes)),
    );
}

/** Tenants' quotas in the job queue and the retention of ended jobs (issue 13). */
function jobStoreFlags(c: Command): void {
  c.addOption(
    new Option(
      "--tenant-max-bytes <bytes>",
      "most bytes one tenant's jobs may store (inputs + results), e.g. 4GiB; a tenant's submit past it is " +
        "RESOURCE_EXHAUSTED (with --tokens; admins are not limited)",
    )
      .argParser(size("--tenant-max-bytes"))
      .default(D.tenantMaxBytes, formatByteSize(D.tenantMaxBytes))
      .env("TESSERA_TENANT_MAX_BYTES"),
  )
    .addOption(
      new Option("--tenant-max-jobs <n>", "most jobs one tenant may have queued or running (with --tokens)")
        .argParser(int("--tenant-max-jobs", 1))
        .default(D.tenantMaxJobs)
        .env("TESSERA_TENANT_MAX_JOBS"),
    )
    .addOption(
      new Option(
        "--job-retention <duration>",
        "an ended job (completed, failed or cancelled) is deleted, input, results and state, this long after it " +
          "ended, e.g. 30d, 12h (ms, s, m, h, d)",
      )
        .argParser(duration("--job-retention"))
        .default(D.jobRetentionMs, formatDuration(D.jobRetentionMs))
        .env("TESSERA_JOB_RETENTION"),
    )
    .addOption(
      new Option("--job-sweep <duration>", "how often the retention sweep runs, e.g. 10m")
        .argParser(duration("--job-sweep"))
        .default(D.jobSweepMs, formatDuration(D.jobSweepMs))
        .env("TESSERA_JOB_SWEEP"),
    );
}

/** Maps the parsed flags onto runCoordinator's options and runs it until stopped. */
async function coordinatorAction(o: OptionValues): Promise<void> {
  (await security()).applyTransport(o, "the coordinator", true, "coordinator");
  if (o.nats) (await security()).applyNatsAuth(o);
  await (
    await import("@tessera/coordinator")
  ).runCoordinator(
    {
      host: o.host,
      port: o.port,
      gpuNodes: o.gpuNode ?? [],
      memoryNodes: o.memoryNode ?? [],
      storageNodes: o.storageNode ?? [],
      models: o.model ?? [],
      tokenizerPath: o.tokenizer,
      storageThresholdTokens: o.storageThreshold,
      retryTimeoutMs: o.retryTimeout,
      stepDeadlineMs: o.stepDeadline,
      stepDeadlineFactor: o.stepDeadlineFactor,
      maxBatchSequences: o.maxBatch,
      maxPrefillTokens: o.maxPrefillTokens,
      kvHeadGroups: o.kvHeadGroups,
      failoverMs: o.failover,
      kvPlacement: o.kvPlacement,
      nats: o.nats,
      natsPrefix: o.natsPrefix,
      nodeLostAfterMs: o.nodeLostAfter,
      jobConcurrency: o.jobConcurrency,
      tokenizeThreads: o.tokenizeThreads,
      tenantMaxBytes: o.tenantMaxBytes,
      tenantMaxJobs: o.tenantMaxJobs,
      jobRetentionMs: o.jobRetention,
      jobSweepMs: o.jobSweep,
      kubernetes: o.kubernetes,
      kubernetesNamespace: o.kubernetesNamespace,
      kubernetesClusterDomain: o.kubernetesClusterDomain,
      tokensFile: o.tokens,
      limits: {
        maxPrompts: o.limitPrompts,
        maxPromptBytes: o.limitPromptBytes,
        maxTokens: o.limitMaxTokens,
        maxRequestBytes: o.limitRequestBytes,
      },
    },
    { port: o.metricsPort },
    { port: o.httpPort },
  );
}
