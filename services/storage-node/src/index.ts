/** The storage-node role: the Attention service with the KV cache in files, streamed through a bounded buffer. */
export {
  createStorageNode,
  compileStorageNodeOptions,
  planChunks,
  packLoads,
  ATTENTION_SERVICE_NAME,
  MIN_BUFFER_BYTES,
  type StorageNode,
  type StorageNodeOptions,
  type CompiledStorageNodeOptions,
  type Chunk,
  type Load,
} from "./storage-node.js";
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
export { runStorageNode } from "./main.js";
export {
  profileStorageNode,
  checkStorageProfile,
  measureDiskWrite,
  STORAGE_PROFILE_SIZES,
  type StorageProfileOptions,
} from "./profile.js";
