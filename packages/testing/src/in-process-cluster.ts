/**
 * A cluster whose nodes and coordinator run inside the test process: real
 * gRPC servers on loopback ports, started in the right order and stopped
 * (coordinator first) through the test's `after` hook, even when the test
 * fails. Use the child-process cluster (`startTestCluster`) when a test
 * must kill or signal a node's process.
 */
import { createCoordinator, type CoordinatorOptions, type CoordinatorService } from "@tessera/coordinator";
import { createGpuNode, type GpuNode, type GpuNodeOptions } from "@tessera/gpu-node";
import { createMemoryNode, type MemoryNode } from "@tessera/memory-node";
import { createStorageNode, type StorageNode } from "@tessera/storage-node";
import { bundled } from "@tessera/model";
import { tempDir } from "./temp-dir.js";

/** What {@link startInProcessCluster} starts. */
export interface InProcessClusterOptions {
  /** @default 1 */
  gpuNodes?: number;
  /** @default 1 */
  memoryNodes?: number;
  /** @default 0 */
  storageNodes?: number;
  /** Options of every gpu-node beyond its port, e.g. `{ wireDtype: "f32" }`. */
  gpu?: Omit<GpuNodeOptions, "port">;
  /** KV capacity of each memory-node in bytes. @default the node's default (1 GiB) */
  memoryCapacityBytes?: number;
  /**
   * Coordinator options beyond the node addresses (the bundled model by
   * default, logs dropped); a function gets the started nodes, e.g. to add
   * an address nothing listens on.
   */
  coordinator?: Partial<CoordinatorOptions> | ((nodes: StartedNodes) => Partial<CoordinatorOptions>);
}

/** The nodes of an in-process cluster. */
export interface StartedNodes {
  gpus: GpuNode[];
  memories: MemoryNode[];
  storages: StorageNode[];
}

/** A running in-process cluster. */
export interface InProcessCluster extends StartedNodes {
  coordinator: CoordinatorService;
  /** The coordinator's address. */
  address: string;
}

/**
 * Starts the nodes, then a coordinator that knows them, and registers their
 * shutdown (and the removal of storage data directories) with `t.after`.
 */
export async function startInProcessCluster(
  t: { after(fn: () => Promise<void>): void },
  options: InProcessClusterOptions = {},
): Promise<InProcessCluster> {
  const dirs = await Promise.all(Array.from({ length: options.storageNodes ?? 0 }, () => tempDir()));
  const gpus = Array.from({ length: options.gpuNodes ?? 1 }, () => createGpuNode({ ...options.gpu, port: 0 }));
  const memories = Array.from({ length: options.memoryNodes ?? 1 }, () =>
    createMemoryNode({ port: 0, capacityBytes: options.memoryCapacityBytes }),
  );
  const storages = dirs.map((d) => createStorageNode({ port: 0, dataDir: d.path }));
  const nodes = [...gpus, ...memories, ...storages];
  let coordinator: CoordinatorService | undefined;
  t.after(async () => {
    await coordinator?.close();
    await Promise.all(nodes.map((n) => n.close()));
    await Promise.all(dirs.map((d) => d.remove()));
  });
  await Promise.all(nodes.map((n) => n.start()));
  coordinator = createCoordinator({
    gpuNodes: gpus.map((g) => g.address),
    memoryNodes: memories.map((m) => m.address),
    storageNodes: storages.map((s) => s.address),
    modelPath: bundled.model,
    tokenizerPath: bundled.tokenizer,
    log: () => {},
    ...(typeof options.coordinator === "function"
      ? options.coordinator({ gpus, memories, storages })
      : options.coordinator),
  });
  await coordinator.start();
  return { gpus, memories, storages, coordinator, address: coordinator.address };
}
