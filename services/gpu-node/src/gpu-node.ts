/**
 * The gpu-node service (tessera.v1.GpuNode): loads a layer range of a
 * llama2.c checkpoint into onnxruntime sessions (loaded-model.ts) and runs
 * batched Forward steps (step-runner.ts), calling the attention node of each
 * sequence (or of each of its KV-head groups, HeadInfer's split) directly
 * over long-lived Attend streams (ARCHITECTURE.md, "One decode step"), with
 * activations in f16 or f32 (`wireDtype`), and handing its hidden states to
 * the next pipeline stage over a Forward stream of its own (downstream.ts).
 * This file wires the gRPC service (Load, Forward, Info, Release) and the lifecycle;
 * the options are options.ts, the pure step plan step-plan.ts.
 */
import type { Service } from "@tessera/core";
import { createGrpcService } from "@tessera/rpc";
import {
  GpuNode as GpuNodeService,
  addService,
  type ForwardRequest,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type NodeProfile,
  Code,
  RpcError,
} from "@tessera/proto";
import { AttendStreams } from "./attend-streams.js";
import { Downstreams } from "./downstream.js";
import { ModelSlot } from "./loaded-model.js";
import { compileGpuNodeOptions, type CompiledGpuNodeOptions, type GpuNodeOptions } from "./options.js";
import { profileGpuNode } from "./profile.js";
import { StepRunner, type StepAnswer, type StepRunnerHost } from "./step-runner.js";

/** gRPC service name served (and reported by grpc.health.v1). */
export const GPU_NODE_SERVICE = "tessera.v1.GpuNode";

/**
 * A gpu-node: a {@link Service} of role "gpu" serving tessera.v1.GpuNode
 * and grpc.health.v1. `drain()` answers steps that arrive from then on with
 * UNAVAILABLE, lets running steps end (up to `shutdownGraceMs`) and ends the
 * Forward streams with OK; `close()` also fails pending attention calls,
 * closes the Attend streams and releases the onnxruntime sessions.
 */
export interface GpuNode extends Service {
  /** The options in force, with defaults applied. */
  readonly options: CompiledGpuNodeOptions;
}

/** A running Forward stream: `stop()` pauses it and resolves once its current step is answered. */
interface ForwardStream {
  stop(): Promise<void>;
}

/**
 * Creates a gpu-node (not yet listening; call `start()`).
 * @throws ConfigError naming a bad option.
 */
export function createGpuNode(options: GpuNodeOptions = {}): GpuNode {
  const opts = compileGpuNodeOptions(options);
  const streams = new AttendStreams(opts.attentionTimeoutMs);
  const downstream = new Downstreams(opts.downstreamTimeoutMs);
  const forwards = new Set<ForwardStream>();
  const address = () => service.address;
  const models = new ModelSlot(
    opts,
    () => {
      if (service.state !== "running")
        throw new RpcError(Code.UNAVAILABLE, `gpu-node ${address()} is ${service.state}`);
    },
    address,
  );
  const host: StepRunnerHost = {
    opts,
    streams,
    downstream,
    address,
    state: () => service.state,
    current: () => models.current,
    lease: models.lease,
  };

  /**
   * The advertised profile: measured in start() ("measure"), none ("off"),
   * or the given one with profile_seconds 0 (not measured here) and this
   * node's price.
   */
  let profile: NodeProfile | undefined =
    typeof opts.profile === "object"
      ? { ...opts.profile, pricePerHour: opts.pricePerHour, profileSeconds: 0 }
      : undefined;

  /**
   * GpuNode.Info: price ($/h), profile (unset when off), execution
   * provider, the loaded model, its layer range and its lease's holders.
   */
  async function info() {
    const current = models.current;
    return {
      pricePerHour: opts.pricePerHour,
      profile,
      executionProvider: opts.executionProvider,
      modelPath: current?.modelPath ?? "",
      layerStart: current?.layerStart ?? 0,
      layerEnd: current?.layerEnd ?? 0,
      modelId: current?.modelId ?? "",
      leaseHolders: current ? models.lease.holderIds : [],
    };
  }

  const service = createGrpcService({
    role: "gpu",
    name: "gpu-node",
    host: opts.host,
    port: opts.port,
    serviceNames: [GPU_NODE_SERVICE],
    register: (server) =>
      addService(server, GpuNodeService, {
        load: (req, call) => models.load(req, callSignal(call)),
        forward: (call) => serveForward(call, new StepRunner(host), forwards),
        info,
        release: async (req) => {
          models.lease.release(req.holder);
          return {};
        },
      }),
    shutdownGraceMs: opts.shutdownGraceMs,
    // Measured before the port is bound, so no step competes with it.
    async onStart() {
      if (opts.profile === "measure") profile = await profileGpuNode(opts);
    },
    async onDrain() {
      // Let running steps end (within the grace period) before the server stops taking calls.
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...forwards].map((f) => f.stop())),
        new Promise<void>((resolve) => (grace = setTimeout(resolve, opts.shutdownGraceMs))),
      ]);
      clearTimeout(grace);
      // No step goes on to a later stage from now on: half-close those
      // streams, so the next stages end them with OK.
      downstream.close();
    },
    async beforeShutdown() {
      // Pending attention and downstream-stage calls fail, so running steps
      // end now and their Forward streams end with OK; the streams to later
      // stages are half-closed, so those end theirs with OK too.
      streams.close();
      downstream.close();
      await Promise.all([...forwards].map((f) => f.stop()));
    },
    async onClose() {
      await models.close();
    },
  });
  return Object.assign(service, { options: opts });
}

/**
 * An AbortSignal that aborts when a unary call is cancelled by its caller
 * or its deadline passes (grpc-js emits "cancelled" for both).
 */
function callSignal(call: ServerUnaryCall<unknown, unknown>): AbortSignal {
  const abort = new AbortController();
  if (call.cancelled) abort.abort();
  else call.once("cancelled", () => abort.abort());
  return abort.signal;
}

/**
 * GpuNode.Forward: runs the stream's steps one after another with `runner`
 * (one response per request, in order) until the caller ends or cancels
 * it (a cancel stops the running step before its next layer and drops the
 * steps queued behind it); registered in `forwards` meanwhile so drain and
 * shutdown can stop it.
 */
function serveForward(
  call: ServerDuplexStream<ForwardRequest, StepAnswer>,
  runner: StepRunner,
  forwards: Set<ForwardStream>,
): Promise<void> {
  let chain = Promise.resolve();
  // The running step stops before its next layer once the caller is gone.
  const gone = new AbortController();
  return new Promise<void>((resolve) => {
    const entry = {
      stop: () => {
        call.pause();
        return chain.then(finish);
      },
    };
    const finish = () => {
      forwards.delete(entry);
      resolve();
    };
    forwards.add(entry);
    call.on("data", (req: ForwardRequest) => {
      // Steps that arrive while draining are still answered (UNAVAILABLE),
      // so the coordinator sees one response per request it sent.
      chain = chain
        .then(async () => {
          if (call.cancelled) return;
          const res = await runner.tracedStep(req, gone.signal);
          if (!call.cancelled && !call.writableEnded) call.write(res);
        })
        .catch(() => undefined); // step() answers its own errors; a dead call just drops the reply
    });
    call.on("end", () => void chain.then(finish));
    call.on("cancelled", () => {
      gone.abort();
      void chain.then(finish);
    });
    call.on("error", () => {
      gone.abort();
      void chain.then(finish);
    });
  });
}
