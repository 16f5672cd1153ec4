/**
 * Options of a gpu-node: what a user gives ({@link GpuNodeOptions}), every
 * default written once ({@link GPU_NODE_DEFAULTS}, read by the compiler and
 * by the CLI's flags), and the compiled, validated, frozen form the node runs
 * with ({@link compileGpuNodeOptions}).
 */
import {
  ConfigError,
  DEFAULT_HOST,
  DEFAULT_SHUTDOWN_GRACE_MS,
  hostOption,
  nonNegativeNumber,
  oneOf,
  portOption,
  positiveInt,
  positiveMs,
  type WireDtype,
} from "@tessera/core";
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
  host: DEFAULT_HOST,
  port: 0,
  executionProvider: "cpu" as ExecutionProvider,
  intraOpThreads: undefined,
  attentionTimeoutMs: 120_000,
  shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
  microBatches: 1,
  maxInFlight: 2,
  downstreamTimeoutMs: 300_000,
  leaseTtlMs: 10_000,
  wireDtype: "f16" as WireDtype,
  weightDtype: "auto" as "auto" | WeightDtype,
  pricePerHour: 0,
  profile: "off",
} as const);

/** The accepted `executionProvider` values (the `--execution-provider` flag's choices). */
export const EXECUTION_PROVIDERS = Object.freeze(["cpu", "cuda"] as const satisfies readonly ExecutionProvider[]);
/** The accepted `wireDtype` values. */
export const WIRE_DTYPES = Object.freeze(["f16", "f32"] as const satisfies readonly WireDtype[]);
/** The accepted `weightDtype` values ("auto" picks by execution provider). */
export const WEIGHT_DTYPES = Object.freeze(["auto", "f16", "f32"] as const satisfies readonly ("auto" | WeightDtype)[]);

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
   * Milliseconds the model lease stays live after its last Load or step
   * (model-lease.ts): meanwhile a Load of another model or range by a
   * coordinator other than the lease's holders is refused (LEASED). Below
   * the coordinator's `retryTimeoutMs` (30 s), so a waiting coordinator gets
   * the node once the other is done. @default 10000
   */
  leaseTtlMs?: number;
  /** Where the node logs what it stopped or refused (one line each). @default stderr */
  log?: (line: string) => void;
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
  readonly leaseTtlMs: number;
  readonly log: (line: string) => void;
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
  const executionProvider = oneOf(
    "executionProvider",
    options.executionProvider,
    EXECUTION_PROVIDERS,
    D.executionProvider,
  );
  const weightDtype = oneOf("weightDtype", options.weightDtype, WEIGHT_DTYPES, D.weightDtype);
  const profile = options.profile ?? D.profile;
  if (typeof profile === "object") checkGpuProfile(profile);
  else if (profile !== "measure" && profile !== "off")
    throw new ConfigError("profile", `must be "measure", "off" or a NodeProfile, got ${JSON.stringify(profile)}`);
  return Object.freeze({
    pricePerHour: nonNegativeNumber(
      "pricePerHour",
      options.pricePerHour,
      typeof profile === "object" ? profile.pricePerHour : D.pricePerHour,
    ),
    profile,
    host: hostOption(options.host, "host", D.host),
    port: portOption(options.port, "port", D.port),
    executionProvider,
    wireDtype: oneOf("wireDtype", options.wireDtype, WIRE_DTYPES, D.wireDtype),
    weightDtype: weightDtype === "auto" ? defaultWeightDtype(executionProvider) : weightDtype,
    intraOpThreads:
      options.intraOpThreads === undefined
        ? D.intraOpThreads
        : positiveInt("intraOpThreads", options.intraOpThreads, 1),
    attentionTimeoutMs: positiveMs("attentionTimeoutMs", options.attentionTimeoutMs, D.attentionTimeoutMs),
    shutdownGraceMs: positiveMs("shutdownGraceMs", options.shutdownGraceMs, D.shutdownGraceMs),
    microBatches: positiveInt("microBatches", options.microBatches, D.microBatches),
    maxInFlight: positiveInt("maxInFlight", options.maxInFlight, D.maxInFlight),
    downstreamTimeoutMs: positiveMs("downstreamTimeoutMs", options.downstreamTimeoutMs, D.downstreamTimeoutMs),
    leaseTtlMs: positiveMs("leaseTtlMs", options.leaseTtlMs, D.leaseTtlMs),
    log: options.log ?? ((line: string) => process.stderr.write(line + "\n")),
  });
}
