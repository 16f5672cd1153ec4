/**
 * The coordinator service: takes batches over `tessera.v1.Coordinator`
 * (api/coordinator-rpcs.ts), loads the model on the gpu-nodes, and runs
 * each batch with the engine ({@link runBatch}, engine/). The node set
 * starts from its options and changes with AddNode / RemoveNode, with the
 * NATS node registry when `nats` is set (nodes that register, deregister,
 * stop or resume heartbeating), with Kubernetes pods when `kubernetes` is
 * set (discovery/), and with nodes jobs find lost; see {@link Membership}.
 * With `nats` it also serves the batch-job RPCs (SubmitJob .. WatchJob)
 * from the NATS job queue; see {@link createJobService}. Its job worker
 * runs jobs through {@link CoordinatorService.generate}, in-process.
 */
import { SpanKind, trace } from "@opentelemetry/api";
import {
  Attention,
  Code,
  Coordinator,
  RpcError,
  GpuNode,
  addService,
  createClient,
  endSpanWhen,
  type Client,
  type GenerateEventSchema,
  type GenerateRequest,
  type MessageInitShape,
} from "@tessera/proto";
import type { Service } from "@tessera/core";
import { createGrpcService } from "@tessera/rpc";
import { watchRegistry, type RegistryWatcher } from "@tessera/nats";
import type { KubernetesWatcher } from "./discovery/k8s-discovery.js";
import { applyDiscoveryEvent, type DiscoveryEvent } from "./discovery/registry-events.js";
import { coordinatorRpcs } from "./api/coordinator-rpcs.js";
import { createGenerate } from "./api/generate.js";
import { createJobService } from "./api/job-service.js";
import type { JobRunner } from "./api/job-worker.js";
import { Authenticator, authenticated, loadTokens } from "./api/auth.js";
import { BatchSlots } from "./batch-slots.js";
import type { GenAiOperation, TokenListener } from "./engine/index.js";
import { ModelCache } from "./model-cache.js";
import { Membership } from "./membership.js";
import { watchTokenizer } from "./metrics.js";
import { TokenizerPool, type TokenizerPoolStats } from "./tokenize/tokenizer-pool.js";
import { compileCoordinatorOptions, type CompiledCoordinatorOptions, type CoordinatorOptions } from "./options.js";

/** A running coordinator. */
export interface CoordinatorService extends Service, JobRunner {
  readonly options: CompiledCoordinatorOptions;
  /** The live node set (starts from `options`). */
  readonly membership: Membership;
  /** The tokeniser pool's tasks queued and running, its tenants with tasks queued and its threads. */
  tokenizerStats(): TokenizerPoolStats;
  /** The NATS node registry watcher while running with `nats`; undefined otherwise. */
  readonly registry: RegistryWatcher | undefined;
  /**
   * Runs a Generate request in-process, as an admin (the job worker's
   * path): the checks, limits and engine of the Generate RPC, in a
   * "tessera.v1.Coordinator/Generate" span under the active context.
   * `run.tenant` (a job's submitter) queues its tokenising as that tenant's.
   * @throws RpcError as the RPC would (UNAVAILABLE unless running, CANCELLED when `run.signal` aborts).
   */
  generate(
    request: GenerateRequest,
    run: {
      signal: AbortSignal;
      emit(event: MessageInitShape<typeof GenerateEventSchema>): void;
      tenant?: string | undefined;
      /** Sees each token as it is sampled, and may stop its sequence (engine/context.ts). */
      onToken?: TokenListener | undefined;
      /** gen_ai.operation.name of its prompts' GenAI spans; @default "text_completion" (chat completions: "chat"). */
      operation?: GenAiOperation | undefined;
    },
  ): Promise<void>;
  /** The bearer tokens of its callers (the HTTP API identifies its callers with it too). */
  readonly authenticator: Authenticator;
}

const tracer = trace.getTracer("@tessera/coordinator");

/**
 * Creates a coordinator; `start()` binds its port.
 * @throws ConfigError naming the option when options are invalid.
 */
export function createCoordinator(userOptions: CoordinatorOptions): CoordinatorService {
  const options = compileCoordinatorOptions(userOptions);
  const attentionClients = new Map<string, Client<typeof Attention>>();
  const gpuClients = new Map<string, Client<typeof GpuNode>>();
  const membership = new Membership({
    gpu: options.gpuNodes,
    memory: options.memoryNodes,
    storage: options.storageNodes,
  });
  membership.subscribe((c) => options.log(`cluster: ${c.role}-node ${c.address} ${c.kind} (${c.reason})`));
  let registry: RegistryWatcher | undefined;
  // Node pods on Kubernetes drive the membership as the registry does.
  let kube: KubernetesWatcher | undefined;
  // Bearer tokens → tenants (every caller an admin without a tokens file).
  const auth = new Authenticator(options.tokensFile === undefined ? undefined : loadTokens(options.tokensFile));
  // SubmitJob .. WatchJob: the NATS job queue under natsPrefix (FAILED_PRECONDITION without nats).
  const jobService = createJobService({ ...options, identify: (metadata) => auth.identify(metadata) });
  const onDiscovery = (e: DiscoveryEvent) => applyDiscoveryEvent(membership, e, options.log);

  const attentionClient = (address: string) => {
    let c = attentionClients.get(address);
    if (!c) attentionClients.set(address, (c = createClient(Attention, address)));
    return c;
  };
  const gpuClient = (address: string) => {
    let c = gpuClients.get(address);
    if (!c) gpuClients.set(address, (c = createClient(GpuNode, address)));
    return c;
  };
  // Prompts are tokenised on worker threads, tenants served in turn (issue 13).
  const tokenizers = new TokenizerPool(options.tokenizeThreads);
  let unwatchTokenizer: (() => void) | undefined;
  const generate = createGenerate({
    options,
    tokenizers,
    models: new ModelCache(),
    membership,
    // The running batch every job's sequences share, by job priority.
    slots: new BatchSlots(options.maxBatchSequences),
    attentionClient,
    gpuClient,
  });
  const impl = coordinatorRpcs({ options, membership, auth, generate, jobService, state: () => service.state });

  const service = createGrpcService({
    role: "coordinator",
    name: "coordinator",
    host: options.host,
    port: options.port,
    serviceNames: ["tessera.v1.Coordinator"],
    register: (server) => addService(server, Coordinator, authenticated(impl, auth)),
    // With tokens the token is the credential: clients need the CA, not a certificate.
    secure: { requireClientCert: !auth.requiresToken },
    shutdownGraceMs: options.shutdownGraceMs,
    // Requests just over the limit get limits.ts's INVALID_ARGUMENT naming
    // it; far larger ones grpc-js refuses before decoding.
    maxReceiveBytes: options.limits.maxRequestBytes + 2 ** 20,
    async onStart() {
      unwatchTokenizer = watchTokenizer(() => tokenizers.stats());
      // With NATS the registered nodes are members before the first call.
      if (options.nats) {
        registry = await watchRegistry({
          nats: options.nats,
          prefix: options.natsPrefix,
          heartbeatMs: options.nodeHeartbeatMs,
          lostAfterMs: options.nodeLostAfterMs,
          onEvent: onDiscovery,
          log: options.log,
        });
      }
      if (options.kubernetes !== undefined) {
        // Loaded only when asked for: @kubernetes/client-node is large.
        const { watchKubernetes } = await import("./discovery/k8s-discovery.js");
        kube = await watchKubernetes({
          labelSelector: options.kubernetes,
          ...(options.kubernetesNamespace ? { namespace: options.kubernetesNamespace } : {}),
          ...(options.kubernetesClusterDomain ? { clusterDomain: options.kubernetesClusterDomain } : {}),
          onEvent: onDiscovery,
          log: options.log,
        });
      }
    },
    onDrain() {
      // Running jobs are cancelled: their sequences are closed on the way out
      // (resuming a job elsewhere comes with the NATS job queue), and their
      // tokenising stops (queued tasks dropped, running ones' threads ended).
      generate.cancelAll();
      // Open WatchJob / GetResults streams end (UNAVAILABLE): nothing of theirs is lost.
      jobService.drain();
    },
    // close() too gives the cancelled jobs the grace period to close their sequences.
    drainOnClose: true,
    async onClose() {
      await registry?.stop();
      registry = undefined;
      await kube?.stop();
      kube = undefined;
      await jobService.close();
      await tokenizers.close();
      unwatchTokenizer?.();
      membership.close();
      for (const c of [...attentionClients.values(), ...gpuClients.values()]) c.close();
    },
  });

  const inProcess: CoordinatorService["generate"] = (request, run) => {
    const attributes = {
      "rpc.system": "in-process",
      "rpc.service": "tessera.v1.Coordinator",
      "rpc.method": "Generate",
    };
    return tracer.startActiveSpan("tessera.v1.Coordinator/Generate", { kind: SpanKind.SERVER, attributes }, (span) => {
      const running = (async () => {
        if (service.state !== "running") throw new RpcError(Code.UNAVAILABLE, `coordinator is ${service.state}`);
        const { tenant, ...caller } = run;
        await generate.run(request, { who: { tenant: undefined, admin: true }, queueAs: tenant, ...caller });
      })();
      return endSpanWhen(span, running);
    });
  };
  return Object.defineProperties(
    Object.assign(service, {
      options,
      membership,
      generate: inProcess,
      authenticator: auth,
      tokenizerStats: () => tokenizers.stats(),
    }),
    {
      registry: { get: () => registry, enumerable: true },
    },
  ) as CoordinatorService;
}
