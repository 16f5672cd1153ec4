/**
 * The memory-node's options: as a user gives them, their defaults
 * ({@link MEMORY_NODE_DEFAULTS}, written once, read by the compiler and the
 * CLI), and the compiler that validates them once.
 */
import { availableParallelism } from "node:os";
import { compileAttentionKernelOption, DEFAULT_ATTENTION_KERNEL } from "@tessera/attention";
import {
  ConfigError,
  DEFAULT_HOST,
  DEFAULT_SHUTDOWN_GRACE_MS,
  byteSizeOption,
  hostOption,
  nonNegativeInt,
  nonNegativeNumber,
  portOption,
  positiveInt,
} from "@tessera/core";
import type { NodeProfile } from "@tessera/proto";
import { checkMemoryProfile } from "./profile.js";

/**
 * Every default of a memory-node's options (see {@link MemoryNodeOptions}),
 * frozen; the options compiler and the CLI read them from here.
 */
export const MEMORY_NODE_DEFAULTS = Object.freeze({
  host: DEFAULT_HOST,
  port: 0,
  /** 1 GiB of KV cache. */
  capacityBytes: 1024 ** 3,
  shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
  /** Every core of this machine. */
  attentionThreads: availableParallelism(),
  attentionKernel: DEFAULT_ATTENTION_KERNEL,
  pricePerHour: 0,
  profile: "off",
} as const);

/** Options of a memory-node as a user gives them; see {@link compileMemoryNodeOptions}. */
export interface MemoryNodeOptions {
  /** Address to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number | string;
  /** KV cache bytes this node may hold, as bytes or a size ("512MiB"). @default 1 GiB */
  capacityBytes?: number | string;
  /** How long drain() lets open calls (Attend streams) finish before forcing, in ms. @default 5000 */
  shutdownGraceMs?: number;
  /**
   * Threads that run attention, the event-loop thread included (1: no
   * worker threads). @default os.availableParallelism()
   */
  attentionThreads?: number;
  /**
   * What this node costs, in US dollars per hour; advertised by Info so the
   * coordinator can place KV caches where a token is cheapest. 0 = unknown.
   * @default 0
   */
  pricePerHour?: number;
  /**
   * RAM read bandwidth in bytes/s advertised by Info. When not given the
   * node measures it at start ({@link measureReadBandwidth}, under 0.5 s).
   */
  readBytesPerSecond?: number;
  /**
   * The node's profile, advertised by Info: "measure" measures it in
   * `start()` before the port is bound ({@link profileMemoryNode}, about a
   * second on two CPU cores; its read bandwidth is then the one Info
   * advertises), "off" advertises none, a NodeProfile (of role "memory",
   * e.g. read from a file `--profile-only` wrote) is advertised as given,
   * with profile_seconds 0, this node's price and capacity. @default "off"
   */
  profile?: "measure" | "off" | NodeProfile;
  /**
   * Name of the attention kernel (a registered one: `attentionKernelNames()`
   * of @tessera/attention), the `--attention-kernel` option; the profile
   * measures it. With "wasm" the KV cache lives in WebAssembly memory and
   * is read in place on `attentionThreads` threads; with "js" it is plain
   * arrays read by the scalar kernel on the event-loop thread. @default "wasm"
   */
  attentionKernel?: string;
  /** Where the node logs (a failed attention worker's error text). @default lines on stderr */
  log?: (line: string) => void;
}

/** Validated, defaulted, frozen memory-node options (sizes in bytes, times in ms). */
export interface CompiledMemoryNodeOptions {
  readonly host: string;
  readonly port: number;
  readonly capacityBytes: number;
  readonly shutdownGraceMs: number;
  readonly attentionThreads: number;
  /** A registered kernel's name. */
  readonly attentionKernel: string;
  /** $/h; 0 = unknown. */
  readonly pricePerHour: number;
  /** bytes/s as configured; undefined = measured at start. */
  readonly readBytesPerSecond: number | undefined;
  /** "measure", "off" or the profile to advertise (role "memory"). */
  readonly profile: "measure" | "off" | NodeProfile;
}

/**
 * Applies defaults and validates once (Temporal's `compileWorkerOptions`
 * pattern).
 * @throws ConfigError naming the option when a value is invalid.
 */
export function compileMemoryNodeOptions(options: MemoryNodeOptions = {}): CompiledMemoryNodeOptions {
  const D = MEMORY_NODE_DEFAULTS;
  const host = hostOption(options.host, "host", D.host);
  const profile = options.profile ?? D.profile;
  if (typeof profile === "object") checkMemoryProfile(profile);
  else if (profile !== "measure" && profile !== "off")
    throw new ConfigError("profile", `must be "measure", "off" or a NodeProfile, got ${JSON.stringify(profile)}`);
  return Object.freeze({
    host,
    profile,
    port: portOption(options.port, "port", D.port, "0..65535"),
    capacityBytes: byteSizeOption("capacityBytes", options.capacityBytes, D.capacityBytes),
    shutdownGraceMs: nonNegativeInt("shutdownGraceMs", options.shutdownGraceMs, D.shutdownGraceMs),
    attentionThreads: positiveInt("attentionThreads", options.attentionThreads, D.attentionThreads),
    attentionKernel: compileAttentionKernelOption(options.attentionKernel, D.attentionKernel),
    pricePerHour: nonNegativeNumber(
      "pricePerHour",
      options.pricePerHour,
      typeof profile === "object" ? profile.pricePerHour : D.pricePerHour,
    ),
    readBytesPerSecond:
      options.readBytesPerSecond === undefined
        ? undefined
        : nonNegativeNumber("readBytesPerSecond", options.readBytesPerSecond, 0),
  });
}
