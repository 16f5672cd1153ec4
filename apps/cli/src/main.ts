#!/usr/bin/env node
/**
 * The `tessera` command line: argument parsing and wiring only; each
 * command's work lives in ./commands and in the role packages.
 */
import { Command, InvalidArgumentError, Option } from "commander";
import { parseByteSize } from "@tessera/core";
import { bundled, defaultTokenizerFor } from "./paths.js";

// Commands import their role lazily, so that e.g. a memory-node process
// never loads onnxruntime and each role starts fast.
const commands = {
  run: () => import("./commands/run.js"),
  model: () => import("./commands/model.js"),
  nodes: () => import("./commands/nodes.js"),
  profile: () => import("./commands/profile.js"),
  plan: () => import("./commands/plan.js"),
  planApply: () => import("./commands/plan-apply.js"),
  jobs: () => import("./commands/jobs.js"),
  certs: () => import("./commands/certs.js"),
  coordinator: () => import("@tessera/coordinator"),
  gpu: () => import("@tessera/gpu-node"),
  memory: () => import("@tessera/memory-node"),
  storage: () => import("@tessera/storage-node"),
};

const int =
  (name: string, min = 0) =>
  (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
const num = (name: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max)
    throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
  return n;
};
const size = (name: string) => (v: string) => {
  try {
    return parseByteSize(name, v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
};
const list = (v: string, prev: string[] = []) => [...prev, ...v.split(",").filter(Boolean)];

// Transport security (issue 5): TLS files, or --plaintext asked for explicitly (loopback only).
const transport = (c: Command, who: "service" | "client") =>
  c
    .addOption(
      new Option("--tls-ca <file>", "CA certificate (PEM) the peers' certificates must be signed by").env(
        "TESSERA_TLS_CA",
      ),
    )
    .addOption(
      new Option(
        "--tls-cert <file>",
        who === "service"
          ? "this process's certificate (PEM; `tessera certs` writes node.pem)"
          : "client certificate (PEM) for a coordinator that asks for one (no --tokens)",
      ).env("TESSERA_TLS_CERT"),
    )
    .addOption(new Option("--tls-key <file>", "the certificate's private key (PEM)").env("TESSERA_TLS_KEY"))
    .addOption(
      new Option("--plaintext", "no TLS: allowed only on loopback addresses (127.0.0.0/8, ::1, localhost)").env(
        "TESSERA_PLAINTEXT",
      ),
    );
// A client of the coordinator: transport security and a tenant's bearer token.
const coordinatorClient = (c: Command) =>
  transport(c, "client").addOption(
    new Option("--token <token>", "bearer token, for a coordinator started with --tokens").env("TESSERA_TOKEN"),
  );
const security = () => import("./security.js");
// A Prometheus scrape endpoint (issue 6) on every service.
const metricsPort = () =>
  new Option(
    "--metrics-port <port>",
    "serve Prometheus metrics at http://<host>:<port>/metrics (0 = a free port; off when unset)",
  )
    .argParser(int("--metrics-port"))
    .env("TESSERA_METRICS_PORT");
// The prefix of every NATS name (buckets, streams), on every command with --nats.
const natsPrefix = () =>
  new Option("--nats-prefix <prefix>", "prefix of the NATS buckets and streams")
    .default("tessera")
    .env("TESSERA_NATS_PREFIX");
// NATS credentials and TLS (issue 5), for every command with --nats. Secrets are best given by env or file.
const natsAuthFlags = (c: Command) =>
  c
    .addOption(new Option("--nats-user <user>", "NATS user name (with --nats-password)").env("TESSERA_NATS_USER"))
    .addOption(new Option("--nats-password <password>", "NATS password").env("TESSERA_NATS_PASSWORD"))
    .addOption(new Option("--nats-token <token>", "NATS authentication token").env("TESSERA_NATS_TOKEN"))
    .addOption(new Option("--nats-nkey <file>", "file holding an NKEY user seed (SU...)").env("TESSERA_NATS_NKEY"))
    .addOption(
      new Option("--nats-creds <file>", "NATS .creds file (user JWT and seed, decentralised auth)").env(
        "TESSERA_NATS_CREDS",
      ),
    )
    .addOption(new Option("--nats-ca <file>", "CA certificate (PEM) of a TLS NATS server").env("TESSERA_NATS_CA"))
    .addOption(
      new Option("--nats-cert <file>", "client certificate (PEM) for NATS mutual TLS").env("TESSERA_NATS_CERT"),
    )
    .addOption(new Option("--nats-key <file>", "its private key (PEM)").env("TESSERA_NATS_KEY"));

/**
 * Runs `fn` with an AbortSignal that SIGINT/SIGTERM abort; a second signal
 * exits at once. Exits with fn's code, or 130 when interrupted.
 */
async function withSignals(fn: (signal: AbortSignal) => Promise<number>): Promise<void> {
  const abort = new AbortController();
  const onSignal = (sig: string) => {
    if (abort.signal.aborted) process.exit(130);
    process.stderr.write(`\n${sig}: stopping (again to force)\n`);
    abort.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    process.exitCode = await fn(abort.signal);
  } catch (err) {
    process.stderr.write(`tessera: ${(err as Error).message}\n`);
    process.exitCode = abort.signal.aborted ? 130 : 1;
  }
}

const program = new Command("tessera")
  .description("Run LLMs split across gpu-, memory- and storage-nodes, placed for tokens/s per dollar.")
  .showHelpAfterError()
  .configureHelp({ showGlobalOptions: true });

program
  .command("run")
  .description(
    "Run a batch of prompts and write one JSON object per prompt. Without --cluster, starts an embedded local " +
      "cluster (coordinator + one node of each role as child processes on free loopback ports) and stops it after.",
  )
  .option(
    "--model <path>",
    `llama2.c checkpoint or Hugging Face folder (default: ${bundled.model}; with --cluster, the coordinator's own)`,
  )
  .option(
    "--tokenizer <path>",
    "tokenizer.bin or tokenizer.json (default: tok512.bin for the bundled model, tokenizer.json in a Hugging Face folder, else tokenizer.bin beside --model)",
  )
  .option(
    "--prompts <path>",
    'prompts JSONL: {"id", "prompt", optional max_tokens, temperature, top_p, seed, kv} per line',
    bundled.prompts,
  )
  .option("--prompt <text>", 'run this single prompt instead of a file ("" = BOS only)')
  .option("--out <path>", 'results JSONL ("-" = stdout)', "-")
  .option("--max-tokens <n>", "most tokens to generate per prompt", int("--max-tokens", 1), 256)
  .option("--temperature <t>", "0 = greedy (argmax); > 0 samples as llama2.c run.c", num("--temperature", 0, 100), 0)
  .option(
    "--top-p <p>",
    "nucleus sampling threshold (used when temperature > 0; 0 or 1 = off)",
    num("--top-p", 0, 1),
    0.9,
  )
  .option("--seed <n>", "sampling seed (default: from the clock, printed)", int("--seed", 1))
  .addOption(
    new Option("--kv <where>", "where each sequence's KV cache lives")
      .choices(["memory", "storage", "auto"])
      .default("auto"),
  )
  .option("--cluster <host:port>", "a running coordinator instead of an embedded cluster")
  .option(
    "--storage-threshold <tokens>",
    "embedded cluster: with --kv auto, prompt + max tokens above this goes to the storage-node",
    int("--storage-threshold", 1),
  )
  .option("--memory-capacity <bytes>", "embedded cluster: KV capacity of the memory-node, e.g. 512MiB")
  .option("--storage-buffer <bytes>", "embedded cluster: storage-node streaming buffer, e.g. 64MiB")
  .addOption(
    new Option("--execution-provider <ep>", "embedded cluster: onnxruntime execution provider of the gpu-node").choices(
      ["cpu", "cuda"],
    ),
  )
  .addOption(
    new Option(
      "--wire-dtype <dtype>",
      "embedded cluster: dtype of activations between nodes (logits stay f32)",
    ).choices(["f16", "f32"]),
  )
  .option(
    "--kv-head-groups <n>",
    "embedded cluster: split each sequence's KV heads into this many groups (must divide n_kv_heads)",
    int("--kv-head-groups", 1),
  )
  .option("-v, --verbose", "show the nodes' logs", false)
  .option("-q, --quiet", "no progress or summary on stderr", false);
coordinatorClient(program.commands.at(-1)!).action((opts) =>
  withSignals(async (signal) => {
    // The embedded cluster is plaintext on loopback; a --cluster must be told.
    if (opts.cluster) (await security()).applyTransport(opts, "tessera run --cluster", false);
    return (await commands.run()).runCommand(opts, signal);
  }),
);

natsAuthFlags(transport(program.command("coordinator"), "service"))
  .addOption(metricsPort())
  .description("Start a coordinator that drives the given nodes.")
  .addOption(new Option("--host <host>", "address to listen on").default("127.0.0.1").env("TESSERA_HOST"))
  .addOption(
    new Option("--port <port>", "port (0 = free port)").argParser(int("--port")).default(7300).env("TESSERA_PORT"),
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
  .addOption(new Option("--model <path>", "default checkpoint for jobs that name none").env("TESSERA_MODEL"))
  .addOption(new Option("--tokenizer <path>", "default tokenizer.bin").env("TESSERA_TOKENIZER"))
  .addOption(
    new Option("--storage-threshold <tokens>", "KV to a storage-node above this many positions (kv auto)")
      .argParser(int("--storage-threshold", 1))
      .default(4096)
      .env("TESSERA_STORAGE_THRESHOLD"),
  )
  .addOption(
    new Option(
      "--max-batch <n>",
      "most sequences in the running batch, over all jobs (others join as they finish, higher-priority jobs first)",
    )
      .argParser(int("--max-batch", 1))
      .default(64)
      .env("TESSERA_MAX_BATCH"),
  )
  .addOption(
    new Option("--max-prefill-tokens <n>", "most prompt tokens prefilled in one step")
      .argParser(int("--max-prefill-tokens", 1))
      .default(4096)
      .env("TESSERA_MAX_PREFILL_TOKENS"),
  )
  .addOption(
    new Option("--retry-timeout <ms>", "how long a step is retried while a node is down")
      .argParser(int("--retry-timeout", 1))
      .default(30000)
      .env("TESSERA_RETRY_TIMEOUT"),
  )
  .addOption(
    new Option(
      "--kv-head-groups <n>",
      "split each sequence's KV heads into this many groups on distinct attention nodes (HeadInfer; must divide n_kv_heads)",
    )
      .argParser(int("--kv-head-groups", 1))
      .default(1)
      .env("TESSERA_KV_HEAD_GROUPS"),
  )
  .addOption(
    new Option(
      "--kv-placement <rule>",
      "plan: sequences follow the job plan's KV shares (most tokens/s per $/h); cheapest-first: each where its " +
        "attention costs least per token, filling the cheapest node first",
    )
      .choices(["plan", "cheapest-first"])
      .default("plan")
      .env("TESSERA_KV_PLACEMENT"),
  )
  .addOption(
    new Option(
      "--failover <ms>",
      "how long a memory-node may fail before its sequences move to other attention nodes (KV rebuilt there)",
    )
      .argParser(int("--failover", 1))
      .default(3000)
      .env("TESSERA_FAILOVER"),
  )
  .addOption(
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
      .default(1)
      .env("TESSERA_JOB_CONCURRENCY"),
  )
  .addOption(
    new Option("--node-lost-after <ms>", "a registered node with no heartbeat for this long is lost (with --nats)")
      .argParser(int("--node-lost-after", 1))
      .default(3000)
      .env("TESSERA_NODE_LOST_AFTER"),
  )
  .addOption(
    new Option(
      "--kubernetes [selector]",
      "discover node pods on Kubernetes by label (list + watch; in-cluster or KUBECONFIG); default selector " +
        "app.kubernetes.io/part-of=tessera",
    ).env("TESSERA_KUBERNETES"),
  )
  .addOption(
    new Option("--kubernetes-namespace <ns>", "namespace of the node pods (with --kubernetes)").env("POD_NAMESPACE"),
  )
  .addOption(
    new Option("--kubernetes-cluster-domain <domain>", "DNS suffix of the node pods' names (with --kubernetes)")
      .default("cluster.local")
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
    new Option("--limit-prompts <n>", "most prompts in one job").argParser(int("--limit-prompts", 1)).default(10000),
  )
  .addOption(
    new Option("--limit-prompt-bytes <bytes>", "most bytes of one prompt's text, e.g. 64KiB")
      .argParser(size("--limit-prompt-bytes"))
      .default(64 * 1024, "64KiB"),
  )
  .addOption(
    new Option("--limit-max-tokens <n>", "largest max_tokens a job may ask for")
      .argParser(int("--limit-max-tokens", 1))
      .default(4096),
  )
  .addOption(
    new Option("--limit-request-bytes <bytes>", "most bytes of one Generate request, e.g. 64MiB")
      .argParser(size("--limit-request-bytes"))
      .default(64 * 1024 ** 2, "64MiB"),
  )
  .action(async (o) => {
    (await security()).applyTransport(o, "the coordinator", true);
    if (o.nats) (await security()).applyNatsAuth(o);
    return (await commands.coordinator()).runCoordinator(
      {
        host: o.host,
        port: o.port,
        gpuNodes: o.gpuNode ?? [],
        memoryNodes: o.memoryNode ?? [],
        storageNodes: o.storageNode ?? [],
        modelPath: o.model,
        tokenizerPath: o.tokenizer,
        storageThresholdTokens: o.storageThreshold,
        retryTimeoutMs: o.retryTimeout,
        maxBatchSequences: o.maxBatch,
        maxPrefillTokens: o.maxPrefillTokens,
        kvHeadGroups: o.kvHeadGroups,
        failoverMs: o.failover,
        kvPlacement: o.kvPlacement,
        nats: o.nats,
        natsPrefix: o.natsPrefix,
        nodeLostAfterMs: o.nodeLostAfter,
        jobConcurrency: o.jobConcurrency,
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
    );
  });

const node = program.command("node").description("Start one node of a role.");
// A node's price, advertised by Info (and in its profile) for the coordinator's planner.
const price = () =>
  new Option(
    "--price <$/h>",
    "what this node costs in US dollars per hour (default: a --profile FILE's, else 0 = unknown)",
  )
    .argParser(num("--price", 0, 1e6))
    .env("TESSERA_PRICE");
// Where a node listens, and (with --nats) where it registers and the address it advertises there.
const hostPort = (c: Command, port: number) =>
  natsAuthFlags(transport(c, "service"))
    .addOption(metricsPort())
    .addOption(new Option("--host <host>", "address to listen on").default("127.0.0.1").env("TESSERA_HOST"))
    .addOption(
      new Option("--port <port>", "port (0 = free port)").argParser(int("--port")).default(port).env("TESSERA_PORT"),
    )
    .addOption(
      new Option("--nats <servers>", "NATS servers (comma-separated host:port): register in the node registry").env(
        "TESSERA_NATS",
      ),
    )
    .addOption(natsPrefix())
    .addOption(
      new Option(
        "--advertise <host:port>",
        "address registered for others to reach this node (default: the bound one)",
      ).env("TESSERA_ADVERTISE"),
    );
/** The node registry options of a node command's parsed options. */
const registryOf = (o: { nats?: string; natsPrefix?: string; advertise?: string }) => ({
  nats: o.nats,
  natsPrefix: o.natsPrefix,
  advertise: o.advertise,
});
// The self-profile (issue 4): measured at start, off, or read from a file --profile-only wrote.
const profiled = (c: Command) =>
  c
    .addOption(
      new Option(
        "--profile <measure|off|FILE>",
        "measure this machine at start (a few seconds) and advertise the profile; off: advertise none; " +
          "FILE: advertise the profile JSON that --profile-only wrote",
      )
        .default("measure")
        .env("TESSERA_PROFILE"),
    )
    .addOption(
      new Option(
        "--profile-only",
        "measure this machine (whatever --profile says), print the profile (proto JSON on stdout, a table on " +
          "stderr) and exit without serving",
      ).default(false),
    );

profiled(hostPort(node.command("gpu").description("Dense compute of a layer range on onnxruntime."), 7301))
  .addOption(price())
  .addOption(
    new Option("--execution-provider <ep>", "onnxruntime execution provider")
      .choices(["cpu", "cuda"])
      .default("cpu")
      .env("TESSERA_EXECUTION_PROVIDER"),
  )
  .addOption(
    new Option("--threads <n>", "onnxruntime intra-op threads (default: onnxruntime's)")
      .argParser(int("--threads", 1))
      .env("TESSERA_THREADS"),
  )
  .addOption(
    new Option("--micro-batches <n>", "split each step's batch into this many micro-batches (Lamina's pipelining)")
      .argParser(int("--micro-batches", 1))
      .default(1)
      .env("TESSERA_MICRO_BATCHES"),
  )
  .addOption(
    new Option("--max-in-flight <n>", "micro-batches of a step running at once")
      .argParser(int("--max-in-flight", 1))
      .default(2)
      .env("TESSERA_MAX_IN_FLIGHT"),
  )
  .addOption(
    new Option("--wire-dtype <dtype>", "dtype of q/k/v and hidden states sent to other nodes (logits stay f32)")
      .choices(["f16", "f32"])
      .default("f16")
      .env("TESSERA_WIRE_DTYPE"),
  )
  .addOption(
    new Option("--weight-dtype <dtype>", "dtype of the projection weights held (auto: f16 on cuda, f32 on cpu)")
      .choices(["auto", "f32", "f16"])
      .default("auto")
      .env("TESSERA_WEIGHT_DTYPE"),
  )
  .action(async (o) => {
    const m = await commands.gpu();
    const options = {
      host: o.host,
      port: o.port,
      executionProvider: o.executionProvider,
      intraOpThreads: o.threads,
      microBatches: o.microBatches,
      maxInFlight: o.maxInFlight,
      wireDtype: o.wireDtype,
      weightDtype: o.weightDtype,
      pricePerHour: o.price,
      profile: await (await commands.profile()).profileOption("gpu", o.profile),
    };
    if (o.profileOnly)
      return (await commands.profile()).printProfile(() => m.profileGpuNode(m.compileGpuNodeOptions(options)));
    (await security()).applyTransport(o, "the gpu-node", true);
    if (o.nats) (await security()).applyNatsAuth(o);
    return m.runGpuNode(options, registryOf(o), { port: o.metricsPort });
  });

profiled(hostPort(node.command("memory").description("Attention over a KV cache held in RAM."), 7302))
  .addOption(
    new Option("--capacity <bytes>", "KV bytes this node may hold")
      .argParser(size("--capacity"))
      .default(parseByteSize("capacity", "1GiB"), "1GiB")
      .env("TESSERA_CAPACITY"),
  )
  .addOption(price())
  .addOption(
    new Option("--read-bandwidth <bytes/s>", "RAM read bandwidth to advertise (default: measured at start)")
      .argParser(num("--read-bandwidth", 0, Number.MAX_VALUE))
      .env("TESSERA_READ_BANDWIDTH"),
  )
  .action(async (o) => {
    const m = await commands.memory();
    const options = {
      host: o.host,
      port: o.port,
      capacityBytes: o.capacity,
      pricePerHour: o.price,
      readBytesPerSecond: o.readBandwidth,
      profile: await (await commands.profile()).profileOption("memory", o.profile),
    };
    if (o.profileOnly)
      return (await commands.profile()).printProfile(() => m.profileMemoryNode(m.compileMemoryNodeOptions(options)));
    (await security()).applyTransport(o, "the memory-node", true);
    if (o.nats) (await security()).applyNatsAuth(o);
    return m.runMemoryNode(options, registryOf(o), { port: o.metricsPort });
  });

profiled(hostPort(node.command("storage").description("Attention streamed from a KV cache in files."), 7303))
  .addOption(new Option("--data-dir <dir>", "where KV cache files live").makeOptionMandatory().env("TESSERA_DATA_DIR"))
  .addOption(
    new Option("--buffer <bytes>", "RAM used to stream KV blocks")
      .argParser(size("--buffer"))
      .default(parseByteSize("buffer", "64MiB"), "64MiB")
      .env("TESSERA_BUFFER"),
  )
  .addOption(
    new Option("--block-positions <n>", "positions per KV block")
      .argParser(int("--block-positions", 1))
      .default(256)
      .env("TESSERA_BLOCK_POSITIONS"),
  )
  .addOption(
    new Option("--capacity <bytes>", "disk bytes this node may use")
      .argParser(size("--capacity"))
      .default(parseByteSize("capacity", "64GiB"), "64GiB")
      .env("TESSERA_CAPACITY"),
  )
  .addOption(
    new Option("--fsync <policy>", "always: KV is on disk before Attend answers; never: left to the OS")
      .choices(["always", "never"])
      .default("always")
      .env("TESSERA_FSYNC"),
  )
  .addOption(price())
  .addOption(
    new Option("--read-bandwidth <bytes/s>", "KV read bandwidth to advertise (0 = unknown)")
      .argParser(num("--read-bandwidth", 0, Number.MAX_VALUE))
      .default(0)
      .env("TESSERA_READ_BANDWIDTH"),
  )
  .action(async (o) => {
    const m = await commands.storage();
    const options = {
      host: o.host,
      port: o.port,
      dataDir: o.dataDir,
      bufferBytes: o.buffer,
      blockPositions: o.blockPositions,
      capacityBytes: o.capacity,
      fsync: o.fsync,
      pricePerHour: o.price,
      readBytesPerSecond: o.readBandwidth,
      profile: await (await commands.profile()).profileOption("storage", o.profile),
    };
    if (o.profileOnly)
      return (await commands.profile()).printProfile(() => m.profileStorageNode(m.compileStorageNodeOptions(options)));
    (await security()).applyTransport(o, "the storage-node", true);
    if (o.nats) (await security()).applyNatsAuth(o);
    return m.runStorageNode(options, registryOf(o), { port: o.metricsPort });
  });

const nodes = program.command("nodes").description("List, add or remove a cluster's nodes (default: list).");
coordinatorClient(nodes.command("list", { isDefault: true }))
  .description("List a cluster's nodes and their health; exit code 1 when any is not SERVING.")
  .requiredOption("--cluster <host:port>", "coordinator address")
  .action((o) =>
    withSignals(async () => {
      (await security()).applyTransport(o, "tessera nodes", false);
      return (await commands.nodes()).nodesCommand(o.cluster, o.token);
    }),
  );
coordinatorClient(nodes.command("add"))
  .description(
    "Add a node to a running cluster: running jobs re-plan and place waiting sequences on it; nothing running moves.",
  )
  .argument("<role>", "gpu, memory or storage")
  .argument("<address>", "the node's host:port")
  .requiredOption("--cluster <host:port>", "coordinator address")
  .action((role: string, address: string, o) =>
    withSignals(async () => {
      (await security()).applyTransport(o, "tessera nodes add", false);
      return (await commands.nodes()).addNodeCommand(o.cluster, role, address, o.token);
    }),
  );
coordinatorClient(nodes.command("remove"))
  .description(
    "Remove a node from a running cluster: running jobs re-plan and move its sequences (KV rebuilt on other nodes).",
  )
  .argument("<address>", "the node's host:port")
  .requiredOption("--cluster <host:port>", "coordinator address")
  .action((address: string, o) =>
    withSignals(async () => {
      (await security()).applyTransport(o, "tessera nodes remove", false);
      return (await commands.nodes()).removeNodeCommand(o.cluster, address, o.token);
    }),
  );

program
  .command("plan")
  .description(
    "Plan a model on a described cluster for tokens/s per dollar: layer ranges per gpu-node, where each sequence's " +
      "KV lives, batch size and micro-batches; prints the plan, its predicted figures and the GPU-only and " +
      "GPU + host-offload baselines on the same budget (predictions of a roofline cost model, not measurements).",
  )
  .requiredOption(
    "--cluster <file>",
    "cluster YAML: node pools with kind, count, price and a catalogue part or figures",
  )
  .requiredOption(
    "--model <model>",
    "llama2.c checkpoint, Hugging Face folder, or Llama-2-7B / Llama-2-13B / Llama-2-70B",
  )
  .requiredOption("--batch <n>", "most sequences decoded at once", int("--batch", 1))
  .requiredOption("--prompt-tokens <n>", "prompt length of each sequence", int("--prompt-tokens", 1))
  .requiredOption("--output-tokens <n>", "tokens generated per sequence", int("--output-tokens", 1))
  .option("--latency-ms <n>", "bound on the time between two tokens of a sequence", num("--latency-ms", 0, 1e9))
  .addOption(
    new Option("--objective <o>", "tokens/s of the whole job, or of decode alone (prefill elsewhere)")
      .choices(["job", "decode"])
      .default("job"),
  )
  .option("--json", "machine-readable output", false)
  .option("--apply", "scale the node pools' StatefulSets on Kubernetes to the plan", false)
  .option("--dry-run", "with --apply: print what would change; change nothing", false)
  .option("--kubeconfig <file>", "kubeconfig for --apply (default: KUBECONFIG, ~/.kube/config, in-cluster)")
  .option("--namespace <ns>", "namespace of the StatefulSets (default: the kubeconfig context's)")
  .option("--release <name>", "Helm release (StatefulSets <release>-tessera-<role>-<pool>)", "tessera")
  .option(
    "--statefulset-pattern <p>",
    "StatefulSet name with {release} {fullname} {role} {pool}",
    "{fullname}-{role}-{pool}",
  )
  .action((o) =>
    withSignals(async () => {
      const flags = {
        cluster: o.cluster,
        model: o.model,
        batch: o.batch,
        promptTokens: o.promptTokens,
        outputTokens: o.outputTokens,
        latencyMs: o.latencyMs,
        objective: o.objective,
        json: o.json,
      };
      if (!o.apply) return (await commands.plan()).planCommand(flags);
      return (await commands.planApply()).planApplyCommand({
        ...flags,
        kubeconfig: o.kubeconfig,
        namespace: o.namespace,
        release: o.release,
        statefulSetPattern: o.statefulsetPattern,
        dryRun: o.dryRun,
      });
    }),
  );

// Batch jobs (issue 5): through a coordinator (--cluster, tenants) or straight to NATS JetStream (operators).
const natsFlags = (c: Command) =>
  natsAuthFlags(coordinatorClient(c))
    .addOption(
      new Option(
        "--cluster <host:port>",
        "a coordinator's job RPCs instead of NATS (how tenants reach jobs: with --token, and TLS or --plaintext)",
      ).env("TESSERA_CLUSTER"),
    )
    .addOption(
      new Option("--nats <servers>", "NATS servers (comma-separated host:port)")
        .default("127.0.0.1:4222")
        .env("TESSERA_NATS"),
    )
    .addOption(natsPrefix());
natsFlags(
  program
    .command("submit")
    .description(
      "Submit a batch job: a prompts file in Tessera's JSONL or the OpenAI Batch API format (/v1/completions), " +
        "validated before anything is stored; prints the job id. Results come back in the file's format.",
    )
    .argument("<file>", "input JSONL")
    .option("--job-id <id>", "the job's id (letters, digits, _ and -); submitting an existing id returns that job")
    .addOption(new Option("--priority <p>", "queue priority").choices(["high", "normal", "low"]).default("normal"))
    .option("--tenant <name>", "owner of the job")
    .option("--model <path>", "checkpoint on the cluster's filesystem (default: the coordinator's)")
    .option("--tokenizer <path>", "tokenizer on the cluster's filesystem (default: the coordinator's)")
    .addOption(new Option("--format <f>", "input format").choices(["auto", "tessera", "openai"]).default("auto"))
    .option("--max-tokens <n>", "most tokens to generate per prompt (default 256)", int("--max-tokens", 1))
    .option("--temperature <t>", "0 = greedy (default)", num("--temperature", 0, 100))
    .option("--top-p <p>", "nucleus sampling threshold (default 0.9)", num("--top-p", 0, 1))
    .option("--seed <n>", "sampling seed (default: drawn at submit and kept with the job)", int("--seed", 1)),
).action((file: string, o) => withSignals(async () => (await commands.jobs()).submitCommand(file, o)));
natsFlags(
  program
    .command("jobs")
    .description("List batch jobs: id, status, priority, progress, submitted.")
    .option("--tenant <name>", "only this tenant's jobs")
    .option("--json", "one JSON job state per line", false),
).action((o) => withSignals(async () => (await commands.jobs()).jobsCommand(o)));
natsFlags(
  program
    .command("status")
    .description("Show a batch job's status and progress (prompts done/total, tokens).")
    .argument("<id>", "job id")
    .option("--json", "the job state as JSON", false),
).action((id: string, o) => withSignals(async () => (await commands.jobs()).statusCommand(id, o)));
natsFlags(
  program
    .command("results")
    .description("Write a batch job's results (JSONL, in its input's format) to stdout, as far as they are stored.")
    .argument("<id>", "job id")
    .option("--follow", "keep writing results as they are stored until the job ends", false),
).action((id: string, o) => withSignals(async (signal) => (await commands.jobs()).resultsCommand(id, o, signal)));
natsFlags(
  program
    .command("cancel")
    .description("Cancel a batch job: a queued one at once, a running one at its coordinator's next step.")
    .argument("<id>", "job id"),
).action((id: string, o) => withSignals(async () => (await commands.jobs()).cancelCommand(id, o)));
natsFlags(
  program
    .command("watch")
    .description("Print a progress line at every change of a batch job until it ends (exit 3 unless completed).")
    .argument("<id>", "job id"),
).action((id: string, o) => withSignals(async (signal) => (await commands.jobs()).watchCommand(id, o, signal)));

program
  .command("certs")
  .description(
    "Make a local CA and certificates for mutual TLS between Tessera's services (for development): ca.pem, " +
      "node.pem (server and client), client.pem (an operator's client identity; tenants get tokens) and their " +
      "-key.pem files. A CA already in --out is reused.",
  )
  .option("--out <dir>", "folder to write", "certs")
  .option(
    "--host <name|ip>",
    "extra name of the node certificate, e.g. *.tessera.svc.cluster.local (repeatable or comma-separated; " +
      "localhost, 127.0.0.1 and ::1 always)",
    list,
    [],
  )
  .option("--days <n>", "validity of new certificates in days (1..3650)", int("--days", 1), 365)
  .option("--force", "make a new CA and overwrite existing files", false)
  .option("-q, --quiet", "print nothing on stderr", false)
  .action((o) =>
    withSignals(async () =>
      (await commands.certs()).certsCommand({
        out: o.out,
        hosts: o.host,
        days: o.days,
        force: o.force,
        quiet: o.quiet,
      }),
    ),
  );
program
  .command("token")
  .description(
    "Print a new bearer token on stdout, and on stderr its entry for the coordinator's --tokens file (which " +
      "holds only the token's SHA-256).",
  )
  .requiredOption("--tenant <name>", "the tenant the token acts as")
  .option("--admin", "an admin token: sees every tenant's jobs, adds and removes nodes", false)
  .action((o) => withSignals(async () => (await commands.certs()).tokenCommand({ tenant: o.tenant, admin: o.admin })));

const model = program.command("model").description("Model checkpoints.");
model
  .command("synth")
  .description(
    "Write a checkpoint of any Llama shape with weights generated from a seed (for benchmarks), as a llama2.c file " +
      "or a Hugging Face folder (config.json + model.safetensors, q/k rows in HF's rotary layout as export-hf " +
      "writes them; no tokenizer.json: pass --tokenizer to `tessera run`). Streams tensor by tensor: memory holds " +
      "one tensor, whatever the model's size. The same seed gives the same weights in every format.",
  )
  .requiredOption("--out <path>", "file (llama2c) or folder (hf) to write")
  .option("--dim <n>", "model dimension", int("--dim", 1), 1024)
  .option("--hidden <n>", "FFN hidden dimension (default: Llama's 8/3·dim rounded up to 256)", int("--hidden", 1))
  .option("--layers <n>", "transformer layers", int("--layers", 1), 8)
  .option("--heads <n>", "query heads", int("--heads", 1), 16)
  .option("--kv-heads <n>", "KV heads (GQA; default = heads)", int("--kv-heads", 1))
  .option("--vocab <n>", "vocabulary size", int("--vocab", 1), 32000)
  .option("--seq-len <n>", "context length in positions", int("--seq-len", 1), 2048)
  .option("--seed <n>", "weight seed", int("--seed"), 1)
  .addOption(
    new Option("--format <f>", "llama2c (version-1 header), llama2c-legacy, or hf (Hugging Face folder)")
      .choices(["llama2c", "llama2c-legacy", "hf", "v1", "legacy"])
      .default("llama2c"),
  )
  .addOption(
    new Option("--dtype <t>", "weight type of an hf folder (llama2c is always f32)").choices(["f32", "f16", "bf16"]),
  )
  .addOption(
    new Option("--arch <a>", "layout: llama, or qwen2 (q/k/v biases; hf only)")
      .choices(["llama", "qwen2"])
      .default("llama"),
  )
  .option("--qkv-bias", "same as --arch qwen2", false)
  .option(
    "--separate-classifier",
    "draw a separate classifier (lm_head, as Llama 2) instead of sharing the embedding (as llama2.c's models)",
    false,
  )
  .option("--quiet", "no progress bar", false)
  .action((o) => withSignals(async () => (await (await commands.model()).synthCommand(o), 0)));
model
  .command("info")
  .description(
    "Print a checkpoint's (llama2.c file or Hugging Face folder) format, shape, parameter count, dtype and bytes.",
  )
  .argument("<path>", "llama2.c checkpoint or Hugging Face folder")
  .option("--json", "machine-readable output", false)
  .action((path: string, o) => withSignals(async () => (await (await commands.model()).infoCommand(path, o.json), 0)));
model
  .command("export-hf")
  .description("Write a model as a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json).")
  .requiredOption("--model <path>", "llama2.c checkpoint or Hugging Face folder")
  .option(
    "--tokenizer <path>",
    "tokenizer.bin or tokenizer.json to write as tokenizer.json (default: the model's, as for `tessera run`)",
  )
  .requiredOption("--out <dir>", "folder to write (created if needed)")
  .addOption(new Option("--dtype <t>", "weight type").choices(["f32", "f16", "bf16"]).default("f32"))
  .action((o) =>
    withSignals(async () => {
      const tokenizer = o.tokenizer ?? defaultTokenizerFor(o.model);
      await (await commands.model()).exportHfCommand({ ...o, tokenizer });
      return 0;
    }),
  );

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`tessera: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
