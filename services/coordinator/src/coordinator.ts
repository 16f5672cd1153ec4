/**
 * The coordinator service: takes batches over `tessera.v1.Coordinator`,
 * loads the model on the gpu-nodes, and runs each batch with
 * {@link runBatch}. The node set starts from its options and changes with
 * AddNode / RemoveNode, with the NATS node registry when `nats` is set
 * (nodes that register, deregister, stop or resume heartbeating), and with
 * nodes jobs find lost; see {@link Membership}. With `nats` it also serves
 * the batch-job RPCs (SubmitJob .. WatchJob) from the NATS job queue; see
 * {@link createJobService}.
 */
import { setMaxListeners } from "node:events";
import {
  Attention,
  Code,
  Coordinator,
  GpuNode,
  RpcError,
  addService,
  checkHealth,
  createClient,
  type Client,
  type ServiceImpl,
} from "@tessera/proto";
import { createGrpcService, type Service } from "@tessera/core";
import { watchRegistry, type RegistryEvent, type RegistryWatcher } from "@tessera/nats";
import type { KubernetesWatcher } from "./k8s-discovery.js";
import { runBatch } from "./engine/index.js";
import { ForwardChannel } from "./forward-channel.js";
import { ForwardPipeline } from "./pipeline.js";
import { checkGenerateLimits } from "./limits.js";
import { createJobService } from "./job-service.js";
import { Authenticator, authenticated, loadTokens, requireAdmin } from "./auth.js";
import { BatchSlots, priorityRank } from "./batch-slots.js";
import { planStages, surveyGpuNodes } from "./job-plan.js";
import { ModelCache } from "./model-cache.js";
import { ModelLease } from "./model-lease.js";
import { Membership, type NodeRole } from "./membership.js";
import {
  compileCoordinatorOptions,
  isHostPort,
  type CompiledCoordinatorOptions,
  type CoordinatorOptions,
} from "./options.js";

/** A running coordinator. */
export interface CoordinatorService extends Service {
  readonly options: CompiledCoordinatorOptions;
  /** The live node set (starts from `options`). */
  readonly membership: Membership;
  /**
   * A bearer token (an admin's) for this coordinator's own job worker,
   * which calls Generate like a client; random per process, never stored.
   */
  readonly internalToken: string;
  /** The NATS node registry watcher while running with `nats`; undefined otherwise. */
  readonly registry: RegistryWatcher | undefined;
}

/**
 * Creates a coordinator; `start()` binds its port.
 * @throws ConfigError naming the option when options are invalid.
 */
export function createCoordinator(userOptions: CoordinatorOptions): CoordinatorService {
  const options = compileCoordinatorOptions(userOptions);
  const models = new ModelCache();
  const attentionClients = new Map<string, Client<typeof Attention>>();
  const gpuClients = new Map<string, Client<typeof GpuNode>>();
  const jobs = new Set<AbortController>();
  const runningJobIds = new Set<string>();
  const gpuLeases = new Map<string, ModelLease>();
  // The running batch every job's sequences share, by job priority.
  const slots = new BatchSlots(options.maxBatchSequences);
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

  // The node registry drives the membership as AddNode / RemoveNode and
  // failing calls do; nodes given in the options stay members.
  const onRegistry = (e: Pick<RegistryEvent, "kind" | "role" | "address" | "reason">) => {
    const why = `registry: ${e.reason}`;
    try {
      switch (e.kind) {
        case "joined":
          // A member already (given in the options, or it restarted): up again if it was down.
          if (!membership.add(e.role, e.address, why)) membership.markUp(e.address, why);
          break;
        case "left":
          if (!membership.roleOf(e.address)) break;
          try {
            membership.remove(e.address, why);
          } catch (err) {
            // The last gpu-node or attention node stays a member, down, until another registers.
            options.log(`cluster: ${e.role}-node ${e.address} deregistered: ${(err as Error).message}; kept, down`);
            membership.markDown(e.address, why);
          }
          break;
        case "lost":
          membership.markDown(e.address, why);
          break;
        case "back":
          membership.markUp(e.address, why);
          break;
      }
    } catch (err) {
      options.log(`cluster: registry ${e.kind} of ${e.role}-node ${e.address} ignored: ${(err as Error).message}`);
    }
  };

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

  const impl: ServiceImpl<typeof Coordinator> = {
    ...jobService.rpcs,

    async generate(call) {
      if (service.state !== "running") throw new RpcError(Code.UNAVAILABLE, `coordinator is ${service.state}`);
      const req = call.request;
      const who = auth.identify(call.metadata);
      // A tenant may not jump the batch jobs' queue, and its job ids are
      // its own: they cannot block a stored job's run.
      if (!who.admin && req.priority === "high") {
        throw new RpcError(Code.PERMISSION_DENIED, `priority: "high" needs an admin token (tenant ${who.tenant})`);
      }
      const runKey = req.jobId ? (who.admin ? req.jobId : `${who.tenant}/${req.jobId}`) : "";
      if (req.prompts.length === 0) throw new RpcError(Code.INVALID_ARGUMENT, "prompts: the batch is empty");
      const ids = new Set<string>();
      for (const p of req.prompts) {
        if (!p.id) throw new RpcError(Code.INVALID_ARGUMENT, "prompts: every prompt needs an id");
        if (ids.has(p.id)) throw new RpcError(Code.INVALID_ARGUMENT, `prompts: duplicate id "${p.id}"`);
        ids.add(p.id);
      }
      checkGenerateLimits(req, options.limits);
      if (req.priority && priorityRank(req.priority) === undefined) {
        throw new RpcError(
          Code.INVALID_ARGUMENT,
          `priority: must be high, normal or low (or empty), got ${JSON.stringify(req.priority)}`,
        );
      }
      const modelPath = req.modelPath || options.modelPath;
      const tokenizerPath = req.tokenizerPath || options.tokenizerPath;
      if (!modelPath || !tokenizerPath) {
        throw new RpcError(
          Code.INVALID_ARGUMENT,
          "model_path/tokenizer_path: none given and the coordinator has no default",
        );
      }
      if (runKey && runningJobIds.has(runKey)) {
        throw new RpcError(Code.ALREADY_EXISTS, `job_id: a job "${req.jobId}" is already running`);
      }
      const abort = new AbortController();
      // Every in-flight call of the job listens on this signal.
      setMaxListeners(0, abort.signal);
      call.on("cancelled", () => abort.abort(new RpcError(Code.CANCELLED, "job cancelled")));
      if (call.cancelled) return;
      jobs.add(abort);
      if (runKey) runningJobIds.add(runKey);
      const releases: (() => void)[] = [];
      try {
        const model = await models.get(modelPath, tokenizerPath).catch((err: unknown) => {
          throw new RpcError(Code.INVALID_ARGUMENT, (err as Error).message, { cause: err });
        });
        // The pipeline: every gpu-node a stage, in the order given (the
        // first embeds, the last applies the head), layers split by the
        // planner in proportion to the nodes' measured speed (evenly when
        // one is unprofiled).
        const shape = model.header.shape;
        const gpuNodes = membership.up("gpu");
        if (gpuNodes.length === 0) {
          throw new RpcError(
            Code.UNAVAILABLE,
            membership.all("gpu").length === 0
              ? `no gpu-node${options.nats ? ` has registered in "${options.natsPrefix}-nodes" at ${options.nats}` : ""}`
              : `every gpu-node is down (${membership.all("gpu").join(", ")})`,
          );
        }
        await Promise.all(
          gpuNodes.map(async (address) => {
            try {
              await gpuClient(address).waitForReady(options.connectTimeoutMs);
            } catch (err) {
              throw new RpcError(Code.UNAVAILABLE, `gpu-node at ${address} is unreachable: ${(err as Error).message}`);
            }
          }),
        );
        const gpuSurvey = await surveyGpuNodes(gpuNodes, gpuClient, options.connectTimeoutMs, abort.signal);
        const batch = Math.min(options.maxBatchSequences, req.prompts.length);
        const ranges = planStages(shape, gpuSurvey, {
          batch,
          // Rows of a prefill chunk (the activations a stage must hold).
          promptTokens: Math.ceil(options.maxPrefillTokens / batch),
          outputTokens: 1,
        });
        const stages = ranges.map((range, i) => ({ range, address: gpuNodes[i]!, i }));
        // Leases are taken in a fixed order, so two jobs cannot each hold one
        // stage the other waits for.
        // A lease per (model, layer range, embed, head): the node runs
        // whatever it loaded last, so jobs that split the layers otherwise
        // (another batch size or gpu set) wait their turn.
        for (const { address, range, i } of stages) {
          let lease = gpuLeases.get(address);
          if (!lease) gpuLeases.set(address, (lease = new ModelLease()));
          const key = JSON.stringify([modelPath, range.start, range.end, i === 0, i === stages.length - 1]);
          releases.push(await lease.acquire(key, abort.signal));
        }
        // Loads a stage's layer range; again when a restarted gpu-node
        // answers a step with "no model is loaded".
        const loadStage = ({ range, address, i }: (typeof stages)[number]) =>
          gpuClient(address)
            .load({
              modelPath,
              layerStart: range.start,
              layerEnd: range.end,
              embed: i === 0,
              head: i === stages.length - 1,
            })
            .then(
              () => undefined,
              (err: unknown) => {
                const e = RpcError.from(err);
                throw new RpcError(e.code, `gpu-node ${address}: Load failed: ${e.message}`, { cause: err });
              },
            );
        await Promise.all(stages.map(loadStage));
        const channel = new ForwardPipeline(stages.map(({ address }) => new ForwardChannel(gpuClient(address))));
        try {
          await runBatch(req, {
            options,
            model,
            gpu: channel,
            stages,
            gpuSurvey,
            async reloadStage(address: string) {
              const stage = stages.find((st) => st.address === address);
              if (!stage) throw new RpcError(Code.NOT_FOUND, `gpu-node ${address} is not a stage of this job`);
              options.log(
                `gpu-node ${address}: no model loaded (restarted?); loading layers [${stage.range.start}, ${stage.range.end}) again`,
              );
              await loadStage(stage);
            },
            membership,
            attentionClient,
            slots,
            signal: abort.signal,
            emit: (event) => {
              if (!call.destroyed) call.write(event);
            },
          });
        } finally {
          channel.close();
        }
      } finally {
        for (const release of releases) release();
        jobs.delete(abort);
        if (runKey) runningJobIds.delete(runKey);
      }
    },

    async addNode(req, call) {
      requireAdmin(auth.identify(call.metadata), "AddNode");
      if (!["gpu", "memory", "storage"].includes(req.role)) {
        throw new RpcError(
          Code.INVALID_ARGUMENT,
          `role: must be gpu, memory or storage, got ${JSON.stringify(req.role)}`,
        );
      }
      if (!isHostPort(req.address)) {
        throw new RpcError(Code.INVALID_ARGUMENT, `address: ${JSON.stringify(req.address)} is not host:port`);
      }
      const role = req.role as NodeRole;
      const service = role === "gpu" ? "tessera.v1.GpuNode" : "tessera.v1.Attention";
      const health = await checkHealth(req.address, service, options.connectTimeoutMs);
      if (health !== "SERVING") {
        throw new RpcError(
          Code.UNAVAILABLE,
          `${role}-node ${req.address} does not answer its health check (${health})`,
        );
      }
      try {
        membership.add(role, req.address);
      } catch (err) {
        throw new RpcError(Code.INVALID_ARGUMENT, (err as Error).message, { cause: err });
      }
      return {};
    },

    async removeNode(req, call) {
      requireAdmin(auth.identify(call.metadata), "RemoveNode");
      if (!membership.roleOf(req.address)) {
        throw new RpcError(Code.NOT_FOUND, `address: ${JSON.stringify(req.address)} is not a node of this cluster`);
      }
      try {
        membership.remove(req.address);
      } catch (err) {
        throw new RpcError(Code.FAILED_PRECONDITION, (err as Error).message, { cause: err });
      }
      return {};
    },

    async listNodes() {
      const all = [
        ...membership.all("gpu").map((address) => ({ role: "gpu", address, service: "tessera.v1.GpuNode" })),
        ...membership.all("memory").map((address) => ({ role: "memory", address, service: "tessera.v1.Attention" })),
        ...membership.all("storage").map((address) => ({ role: "storage", address, service: "tessera.v1.Attention" })),
      ];
      const nodes = await Promise.all(
        all.map(async (n) => ({
          role: n.role,
          address: n.address,
          health: await checkHealth(n.address, n.service, 2000),
        })),
      );
      return { nodes };
    },
  };

  const service = createGrpcService({
    role: "coordinator",
    name: "coordinator",
    host: options.host,
    port: options.port,
    serviceNames: ["tessera.v1.Coordinator"],
    register: (server) => addService(server, Coordinator, authenticated(impl, auth)),
    // With tokens the token is the credential: clients need the CA, not a certificate.
    secure: { requireClientCert: !auth.requiresToken },
    graceMs: options.shutdownGraceMs,
    // Requests just over the limit get limits.ts's INVALID_ARGUMENT naming
    // it; far larger ones grpc-js refuses before decoding.
    maxReceiveBytes: options.limits.maxRequestBytes + 2 ** 20,
    async onStart() {
      // With NATS the registered nodes are members before the first call.
      if (options.nats) {
        registry = await watchRegistry({
          nats: options.nats,
          prefix: options.natsPrefix,
          heartbeatMs: options.nodeHeartbeatMs,
          lostAfterMs: options.nodeLostAfterMs,
          onEvent: onRegistry,
          log: options.log,
        });
      }
      if (options.kubernetes !== undefined) {
        // Loaded only when asked for: @kubernetes/client-node is large.
        const { watchKubernetes } = await import("./k8s-discovery.js");
        kube = await watchKubernetes({
          labelSelector: options.kubernetes,
          ...(options.kubernetesNamespace ? { namespace: options.kubernetesNamespace } : {}),
          ...(options.kubernetesClusterDomain ? { clusterDomain: options.kubernetesClusterDomain } : {}),
          onEvent: onRegistry,
          log: options.log,
        });
      }
    },
    onDrain() {
      // Running jobs are cancelled: their sequences are closed on the way out
      // (resuming a job elsewhere comes with the NATS job queue).
      for (const j of jobs) j.abort();
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
      membership.close();
      for (const c of [...attentionClients.values(), ...gpuClients.values()]) c.close();
    },
  });
  return Object.defineProperties(Object.assign(service, { options, membership, internalToken: auth.internalToken }), {
    registry: { get: () => registry, enumerable: true },
  }) as CoordinatorService;
}
