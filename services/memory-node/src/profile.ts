/**
 * A memory-node's self-profile (issue 4, item 1): RAM read bandwidth, the
 * decode attention kernel's KV bytes/s and FLOP/s on the node's attention
 * threads, and its KV capacity, as a tessera.v1.NodeProfile. The
 * measurements are those of @tessera/profiling (`measureReadBandwidth`) and
 * @tessera/profiling (`measureAttentionKernel`), shared with the bench.
 */
import { availableParallelism, totalmem } from "node:os";
import { performance } from "node:perf_hooks";
import { attentionKernel, DEFAULT_ATTENTION_KERNEL } from "@tessera/attention";
import { ConfigError } from "@tessera/core";
import { measureReadBandwidth, measureAttentionKernel } from "@tessera/profiling";
import { NodeProfileSchema, create, type NodeProfile } from "@tessera/proto";

/** What {@link profileMemoryNode} needs; the memory-node's compiled options fit. */
export interface MemoryProfileOptions {
  /** Threads attention runs on (the calling one included). @default os.availableParallelism() */
  readonly attentionThreads?: number;
  /** KV bytes the node may hold, advertised as capacity_bytes. @default 0 */
  readonly capacityBytes?: number;
  /** $/h advertised with the profile. @default 0 */
  readonly pricePerHour?: number;
  /** RAM read bandwidth, bytes/s, as configured; undefined = measured. */
  readonly readBytesPerSecond?: number | undefined;
  /** Name of the attention kernel measured (a registered one). @default "wasm" */
  readonly attentionKernel?: string;
}

/**
 * Sizes of the attention kernel measurement {@link profileMemoryNode} makes
 * (`measureAttentionKernel` of @tessera/profiling), its defaults as the
 * bench uses them: 8 sequences × 2048 positions, 64 MiB of f32 KV per layer
 * shape (above most last-level caches), best of 3; about a second on two
 * CPU cores.
 */
export const MEMORY_PROFILE_SIZES = { sequences: 8, positions: 2048, reps: 3 } as const;

/**
 * Measures this machine as a memory-node (about a second on two CPU cores):
 * RAM read bandwidth (`measureReadBandwidth` of @tessera/profiling, one thread,
 * unless configured) and the decode attention kernel's roofline (the
 * node's `attentionKernel`) on `attentionThreads` threads (`measureAttentionKernel`, sizes
 * {@link MEMORY_PROFILE_SIZES}), plus the configured KV capacity.
 * read_bytes_per_second is the same figure Info's read_bytes_per_second
 * advertises.
 * @returns a NodeProfile of role "memory" (figures case "memory") with the options' price.
 * @throws Error when WebAssembly SIMD with shared memory is unavailable;
 *   RangeError when no kernel has the name given.
 */
export async function profileMemoryNode(o: MemoryProfileOptions = {}): Promise<NodeProfile> {
  const t0 = performance.now();
  const threads = o.attentionThreads ?? availableParallelism();
  const readBytesPerSecond = o.readBytesPerSecond ?? measureReadBandwidth();
  const { sequences, positions, reps } = MEMORY_PROFILE_SIZES;
  const kernel = attentionKernel(o.attentionKernel ?? DEFAULT_ATTENTION_KERNEL);
  const k = await measureAttentionKernel(sequences, positions, threads, reps, kernel);
  return create(NodeProfileSchema, {
    role: "memory",
    pricePerHour: o.pricePerHour ?? 0,
    cores: availableParallelism(),
    memoryBytes: BigInt(totalmem()),
    profileSeconds: (performance.now() - t0) / 1000,
    figures: {
      case: "memory",
      value: {
        readBytesPerSecond,
        kernelKvBytesPerSecond: k.kvBytesPerS,
        kernelFlops: k.flopsPerS,
        itemOverheadSeconds: k.itemS,
        attentionThreads: k.threads,
        capacityBytes: BigInt(o.capacityBytes ?? 0),
      },
    },
  });
}

/**
 * Checks that a given profile is a memory-node's: role "memory" and figures
 * case "memory".
 * @throws ConfigError naming the option "profile".
 */
export function checkMemoryProfile(p: NodeProfile): void {
  if (p.role !== "memory" || p.figures.case !== "memory")
    throw new ConfigError(
      "profile",
      `is a ${p.role || "(no role)"} profile (figures ${p.figures.case ?? "none"}), not a memory-node's`,
    );
}
