/**
 * Options of a gpu-node: what a user gives ({@link GpuNodeOptions}), every
 * default written once ({@link GPU_NODE_DEFAULTS}, read by the compiler and
 * by the CLI's flags), and the compiled, validated, frozen form the node runs
 * with ({@link compileGpuNodeOptions}).
 */
import { ConfigError, type WireDtype } from "@tessera/core";
import type { NodeProfile } from "@tessera/proto";
import { defaultWeightDtype, type ExecutionProvider } from "./dense-model.js";
import type { WeightDtype } from "./llama-graphs.js";
import { checkGpuProfile } from "./profile.js";

/**
 * The default of every {@link GpuNodeOptions} field (frozen). `intraOpThreads`
 * undefined leaves onnxruntime's own (one per physical core); `pricePerHour`
 * applies when no profile gives one.
 */
export const GPU_NODE_DEFAULTS = Object.freeze({
  host: "127.0.0.1",
  port: 0,
  executionProvider: "cpu",
  intraOpThreads: undefined,
  attentionTimeoutMs: 120_000,
  shutdownGraceMs: 5_000,
  microBatches: 1,
  maxInFlight: 2,
  downstreamTimeoutMs: 300_000,
  wireDtype: "f16",
  weightDtype: "auto",
  pricePerHour: 0,
  profile: "off",
} as const);

/** Options of a gpu-node, as a user gives them. */
export interface GpuNodeOptions {
  /** Interface to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number;
  /**
   * onnxruntime execution provider. "cuda" needs onnxruntime-node's CUDA
   * binaries (installed unless `onnxruntime-node-install=skip`); Load fails
   * FAILED_PRECONDITION when they are missing. @default "cpu"
   */
  executionProvider?: string;
  /** onnxruntime intra-op threads per session. @default onnxruntime's (one per physical core) */
  intraOpThreads?: number;
  /** Milliseconds one AttendRequest may wait for its response before its stream is failed. @default 120000 */
  attentionTimeoutMs?: number;
  /** Milliseconds `drain()` waits for running calls before forcing them closed. @default 5000 */
  shutdownGraceMs?: number;
  /**
   * Micro-batches a step's sequences are split into (whole sequences, about
   * equal tokens). Each runs its own layer loop, so while one waits for its
   * attention nodes another runs its dense graphs (Lamina, Chen et al. 2024,
   * "Efficient and Economic Large Language Model Inference with Attention
   * Offloading"). 1 runs the step as one batch. @default 1
   */
  microBatches?: number;
  /** Micro-batches of one step running at once (each holds its own work buffers). @default 2 */
  maxInFlight?: number;
  /**
   * Milliseconds a step sent to the next pipeline stage (ForwardRequest.next_stages)
   * may wait for its response, the later stages' whole step, before that
   * stream is failed (DEADLINE_EXCEEDED naming the stage). @default 300000
   */
  downstreamTimeoutMs?: number;
  /**
   * Dtype of the activations this node sends: q/k/v to attention nodes
   * (which answer o in the same dtype) and hidden states to the next
   * pipeline stage. "f16" halves the bytes on the wire (values rounded to
   * nearest even; see packages/core/src/tensor.ts); "f32" is exact. Logits
   * are always f32; received hidden states may be either. @default "f16"
   */
  wireDtype?: WireDtype;
  /**
   * Element type of the projection weights (and embedding) the node holds
   * (DenseModelOptions.weightDtype): "f16" halves their memory, "f32" keeps
   * them exact, "auto" picks by execution provider ("f16" on CUDA, "f32" on
   * CPU, whose onnxruntime kernels have no f16 MatMul on x86; see
   * defaultWeightDtype). @default "auto"
   */
  weightDtype?: "auto" | WeightDtype;
  /**
   * What this node costs, in US dollars per hour, advertised by Info (and
   * in its profile) for the coordinator's planner. 0 = unknown.
   * @default the given profile's price_per_hour, else 0
   */
  pricePerHour?: number;
  /**
   * The node's profile, advertised by Info: "measure" measures it in
   * `start()` before the port is bound ({@link profileGpuNode}, about 3 s
   * and 530 MiB of weight copies held meanwhile on two CPU cores), "off"
   * advertises none, a NodeProfile (of role
   * "gpu", e.g. read from a file `--profile-only` wrote) is advertised as
   * given, with profile_seconds 0 and this node's price. @default "off"
   */
  profile?: "measure" | "off" | NodeProfile;
}

/** {@link GpuNodeOptions} with defaults applied and validated; frozen. */
export interface CompiledGpuNodeOptions {
  readonly host: string;
  readonly port: number;
  readonly executionProvider: ExecutionProvider;
  readonly intraOpThreads: number | undefined;
  readonly attentionTimeoutMs: number;
  readonly shutdownGraceMs: number;
  readonly microBatches: number;
  readonly maxInFlight: number;
  readonly downstreamTimeoutMs: number;
  readonly wireDtype: WireDtype;
  /** The weight dtype in force ("auto" resolved by execution provider). */
  readonly weightDtype: WeightDtype;
  /** $/h; 0 = unknown. */
  readonly pricePerHour: number;
  /** "measure", "off" or the profile to advertise (role "gpu"). */
  readonly profile: "measure" | "off" | NodeProfile;
}

/**
 * Applies defaults ({@link GPU_NODE_DEFAULTS}) and validates.
 * @throws ConfigError naming the first bad option.
 */
export function compileGpuNodeOptions(options: GpuNodeOptions = {}): CompiledGpuNodeOptions {
  const D = GPU_NODE_DEFAULTS;
  const host = options.host ?? D.host;
  if (typeof host !== "string" || host === "")
    throw new ConfigError("host", `must be a host name or address, got ${JSON.stringify(host)}`);
  const port = options.port ?? D.port;
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new ConfigError("port", `must be an integer in [0, 65535], got ${port}`);
  const executionProvider = options.executionProvider ?? D.executionProvider;
  if (executionProvider !== "cpu" && executionProvider !== "cuda") {
    throw new ConfigError("executionProvider", `must be "cpu" or "cuda", got ${JSON.stringify(executionProvider)}`);
  }
  const intraOpThreads = options.intraOpThreads ?? D.intraOpThreads;
  if (intraOpThreads !== undefined && !(Number.isInteger(intraOpThreads) && intraOpThreads >= 1)) {
    throw new ConfigError("intraOpThreads", `must be a positive integer, got ${intraOpThreads}`);
  }
  const wireDtype = options.wireDtype ?? D.wireDtype;
  if (wireDtype !== "f16" && wireDtype !== "f32")
    throw new ConfigError("wireDtype", `must be "f16" or "f32", got ${JSON.stringify(wireDtype)}`);
  const weightDtype = options.weightDtype ?? D.weightDtype;
  if (weightDtype !== "auto" && weightDtype !== "f16" && weightDtype !== "f32")
    throw new ConfigError("weightDtype", `must be "auto", "f16" or "f32", got ${JSON.stringify(weightDtype)}`);
  const profile = options.profile ?? D.profile;
  if (typeof profile === "object") checkGpuProfile(profile);
  else if (profile !== "measure" && profile !== "off")
    throw new ConfigError("profile", `must be "measure", "off" or a NodeProfile, got ${JSON.stringify(profile)}`);
  const pricePerHour = options.pricePerHour ?? (typeof profile === "object" ? profile.pricePerHour : D.pricePerHour);
  if (!(typeof pricePerHour === "number" && Number.isFinite(pricePerHour) && pricePerHour >= 0))
    throw new ConfigError("pricePerHour", `must be a finite number >= 0, got ${String(pricePerHour)}`);
  return Object.freeze({
    pricePerHour,
    profile,
    host,
    port,
    executionProvider,
    wireDtype,
    weightDtype: weightDtype === "auto" ? defaultWeightDtype(executionProvider) : weightDtype,
    intraOpThreads,
    attentionTimeoutMs: positiveMs("attentionTimeoutMs", options.attentionTimeoutMs ?? D.attentionTimeoutMs),
    shutdownGraceMs: positiveMs("shutdownGraceMs", options.shutdownGraceMs ?? D.shutdownGraceMs),
    microBatches: positiveInt("microBatches", options.microBatches ?? D.microBatches),
    maxInFlight: positiveInt("maxInFlight", options.maxInFlight ?? D.maxInFlight),
    downstreamTimeoutMs: positiveMs("downstreamTimeoutMs", options.downstreamTimeoutMs ?? D.downstreamTimeoutMs),
  });
}

/** `v` when it is a positive, finite number of milliseconds. @throws ConfigError naming `name`. */
function positiveMs(name: string, v: number): number {
  if (!(Number.isFinite(v) && v > 0))
    throw new ConfigError(name, `must be a positive number of milliseconds, got ${v}`);
  return v;
}

/** `v` when it is a positive integer. @throws ConfigError naming `name`. */
function positiveInt(name: string, v: number): number {
  if (!(Number.isInteger(v) && v >= 1)) throw new ConfigError(name, `must be a positive integer, got ${v}`);
  return v;
}
