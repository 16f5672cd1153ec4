/** The storage-node role: the Attention service with the KV cache in files, streamed through a bounded buffer. */
export { createStorageNode, planChunks, packLoads, type StorageNode, type Chunk, type Load } from "./storage-node.js";
export {
  compileStorageNodeOptions,
  MIN_BUFFER_BYTES,
  STORAGE_NODE_DEFAULTS,
  FSYNC_POLICIES,
  type StorageNodeOptions,
  type CompiledStorageNodeOptions,
} from "./options.js";
/** gRPC service name the health service reports on (the attention-node shell's). */
export { ATTENTION_SERVICE_NAME } from "@tessera/attention";
export {
  KvStoreError,
  sequenceDirName,
  layerFileName,
  parseManifest,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  type FsyncPolicy,
  type Manifest,
} from "./kv-store.js";
export { blockCrc } from "./block-crc.js";
export { runStorageNode } from "./main.js";
export {
  profileStorageNode,
  checkStorageProfile,
  measureDiskWrite,
  STORAGE_PROFILE_SIZES,
  type StorageProfileOptions,
} from "./profile.js";
