/**
 * The storage-node's options: as a user gives them, their defaults
 * ({@link STORAGE_NODE_DEFAULTS}, written once, read by the compiler and the
 * CLI), and the compiler that validates them once.
 */
import { resolve } from "node:path";
import { compileAttentionKernelOption, DEFAULT_ATTENTION_KERNEL } from "@tessera/attention";
import {
  ConfigError,
  DEFAULT_HOST,
  DEFAULT_SHUTDOWN_GRACE_MS,
  byteSizeOption,
  hostOption,
  nonNegativeInt,
  nonNegativeNumber,
  oneOf,
  portOption,
  positiveInt,
} from "@tessera/core";
import type { NodeProfile } from "@tessera/proto";
import type { FsyncPolicy } from "./kv-store.js";
import { checkStorageProfile } from "./profile.js";

/**
 * Every default of a storage-node's options (see {@link StorageNodeOptions};
 * `dataDir` has none), frozen; the options compiler and the CLI read them
 * from here.
 */
export const STORAGE_NODE_DEFAULTS = Object.freeze({
  host: DEFAULT_HOST,
  port: 0,
  /** 64 MiB streaming buffer. */
  bufferBytes: 64 * 1024 * 1024,
  blockPositions: 256,
  /** 64 GiB of KV cache on disk. */
  capacityBytes: 64 * 1024 ** 3,
  fsync: "always" as FsyncPolicy,
  shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
  attentionKernel: DEFAULT_ATTENTION_KERNEL,
  pricePerHour: 0,
  readBytesPerSecond: 0,
  profile: "off",
} as const);

/** Options of a storage-node as a user gives them; see {@link compileStorageNodeOptions}. */
export interface StorageNodeOptions {
  /** Directory holding the KV cache files; created if missing. Required. */
  dataDir: string;
  /** Address to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number | string;
  /**
   * RAM used to stream K/V blocks during attention, bytes or a size
   * ("64MiB"). Each half (one is read while the other is attended over)
   * must hold one position's K and V rows of a sequence's layout.
   * @default 64 MiB
   */
  bufferBytes?: number | string;
  /** Positions per block in the layer files of new sequences. @default 256 */
  blockPositions?: number;
  /** Disk bytes of KV cache this node may hold, bytes or a size. @default 64 GiB */
  capacityBytes?: number | string;
  /** When writes reach the disk; see kv-store.ts. @default "always" */
  fsync?: FsyncPolicy;
  /** How long drain() lets open calls finish before forcing, in ms. @default 5000 */
  shutdownGraceMs?: number;
  /**
   * Name of the attention kernel (a registered one: `attentionKernelNames()`
   * of @tessera/attention), the `--attention-kernel` option; the profile
   * measures it. "wasm": WebAssembly SIMD on a read buffer in wasm memory
   * (JS where WebAssembly SIMD is missing); "js": the scalar f64 kernel,
   * for comparison in benchmarks. @default "wasm"
   */
  attentionKernel?: string;
  /**
   * What this node costs, in US dollars per hour; advertised by Info so the
   * coordinator can place KV caches where a token is cheapest. 0 = unknown.
   * @default 0
   */
  pricePerHour?: number;
  /**
   * Bytes/s this node streams its KV cache at, as the operator measured or
   * expects it (the node does not measure its disk); advertised by Info.
   * 0 = unknown. @default 0
   */
  readBytesPerSecond?: number;
  /**
   * The node's profile, advertised by Info: "measure" measures it in
   * `start()` before the port is bound ({@link profileStorageNode}: the
   * data directory's disk, one to a few seconds), "off" advertises none, a
   * NodeProfile (of role "storage", e.g. read from a file `--profile-only`
   * wrote) is advertised as given, with profile_seconds 0 and this node's
   * price, capacity and buffer size. @default "off"
   */
  profile?: "measure" | "off" | NodeProfile;
}

/** Validated, defaulted, frozen storage-node options (sizes in bytes, times in ms, dataDir absolute). */
export interface CompiledStorageNodeOptions {
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  readonly bufferBytes: number;
  readonly blockPositions: number;
  readonly capacityBytes: number;
  readonly fsync: FsyncPolicy;
  readonly shutdownGraceMs: number;
  /** A registered kernel's name. */
  readonly attentionKernel: string;
  /** $/h; 0 = unknown. */
  readonly pricePerHour: number;
  /** bytes/s; 0 = unknown. */
  readonly readBytesPerSecond: number;
  /** "measure", "off" or the profile to advertise (role "storage"). */
  readonly profile: "measure" | "off" | NodeProfile;
}

/** The accepted `fsync` policies (the `--fsync` flag's choices). */
export const FSYNC_POLICIES = Object.freeze(["always", "never"] as const satisfies readonly FsyncPolicy[]);

/** Smallest accepted bufferBytes; a layout may need more (checked at OpenSequence). */
export const MIN_BUFFER_BYTES = 1024;

/**
 * Applies defaults and validates once (Temporal's `compileWorkerOptions`
 * pattern).
 * @throws ConfigError naming the option when a value is invalid.
 */
export function compileStorageNodeOptions(options: StorageNodeOptions): CompiledStorageNodeOptions {
  if (typeof options?.dataDir !== "string" || options.dataDir.length === 0) {
    throw new ConfigError("dataDir", "a directory for the KV cache files is required");
  }
  const D = STORAGE_NODE_DEFAULTS;
  const profile = options.profile ?? D.profile;
  if (typeof profile === "object") checkStorageProfile(profile);
  else if (profile !== "measure" && profile !== "off")
    throw new ConfigError("profile", `must be "measure", "off" or a NodeProfile, got ${JSON.stringify(profile)}`);
  return Object.freeze({
    dataDir: resolve(options.dataDir),
    host: hostOption(options.host, "host", D.host),
    port: portOption(options.port, "port", D.port),
    bufferBytes: byteSizeOption("bufferBytes", options.bufferBytes, D.bufferBytes, MIN_BUFFER_BYTES),
    blockPositions: positiveInt("blockPositions", options.blockPositions, D.blockPositions),
    capacityBytes: byteSizeOption("capacityBytes", options.capacityBytes, D.capacityBytes),
    fsync: oneOf("fsync", options.fsync, FSYNC_POLICIES, D.fsync),
    shutdownGraceMs: nonNegativeInt("shutdownGraceMs", options.shutdownGraceMs, D.shutdownGraceMs),
    attentionKernel: compileAttentionKernelOption(options.attentionKernel, D.attentionKernel),
    pricePerHour: nonNegativeNumber(
      "pricePerHour",
      options.pricePerHour,
      typeof profile === "object" ? profile.pricePerHour : D.pricePerHour,
    ),
    readBytesPerSecond: nonNegativeNumber("readBytesPerSecond", options.readBytesPerSecond, D.readBytesPerSecond),
    profile,
  });
}
