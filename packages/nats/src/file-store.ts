/**
 * Uploaded files (OpenAI's `/v1/files`, issue 14): their bytes and metadata
 * in a JetStream object store of their own, `<prefix>-files`, one object
 * per file named by its id. The metadata (owner tenant, filename, purpose,
 * created_at) rides in the object's `metadata`; `bytes` is the object's size.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Objm, type ObjectInfo, type ObjectStore } from "@nats-io/obj";
import { jobNames, nonce } from "./job-keys.js";

/** One stored file; `owner` "" is an admin's (no tenant). */
export interface StoredFile {
  /** "file-<24 hex>". */
  id: string;
  owner: string;
  filename: string;
  purpose: string;
  /** Size in bytes. */
  bytes: number;
  /** Unix seconds. */
  createdAt: number;
}

/** The object store of uploaded files under one NATS prefix. */
export class FileStore {
  private constructor(private readonly obj: ObjectStore) {}

  /**
   * Declares (or binds to) the bucket `<prefix>-files`.
   * @throws JobError for a bad prefix; NATS errors when JetStream is off.
   */
  static async open(nc: NatsConnection, prefix?: string): Promise<FileStore> {
    return new FileStore(await new Objm(jetstream(nc)).create(jobNames(prefix).filesBucket));
  }

  /** Stores `data` as a new file of `owner` and answers it. */
  async put(owner: string, filename: string, purpose: string, data: Uint8Array): Promise<StoredFile> {
    const id = `file-${nonce(12)}`;
    const createdAt = Math.floor(Date.now() / 1000);
    const metadata = { owner, filename, purpose, created_at: String(createdAt) };
    await this.obj.putBlob({ name: id, metadata }, data);
    return { id, owner, filename, purpose, bytes: data.length, createdAt };
  }

  /** File `id` when `owner` owns it (any owner's when `owner` is undefined), else undefined. */
  async get(id: string, owner: string | undefined): Promise<StoredFile | undefined> {
    if (!/^file-[0-9a-f]{1,64}$/.test(id)) return undefined;
    const info = await this.obj.info(id);
    const f = info && !info.deleted ? toFile(info) : undefined;
    return f && (owner === undefined || f.owner === owner) ? f : undefined;
  }

  /** Files of `owner` (every owner's when undefined), oldest first. */
  async list(owner: string | undefined): Promise<StoredFile[]> {
    const all = (await this.obj.list()).filter((i) => !i.deleted).map(toFile);
    return all.filter((f) => owner === undefined || f.owner === owner).sort((a, b) => a.createdAt - b.createdAt);
  }

  /** The bytes of file `id` (check ownership with {@link get} first); undefined when gone. */
  async content(id: string): Promise<Uint8Array | undefined> {
    return (await this.obj.getBlob(id)) ?? undefined;
  }

  /** Deletes file `id` (check ownership with {@link get} first). */
  async delete(id: string): Promise<void> {
    await this.obj.delete(id);
  }

  /** Total bytes of `owner`'s files. */
  async usage(owner: string): Promise<number> {
    return (await this.list(owner)).reduce((n, f) => n + f.bytes, 0);
  }
}

function toFile(i: ObjectInfo): StoredFile {
  const m = i.metadata ?? {};
  return {
    id: i.name,
    owner: m["owner"] ?? "",
    filename: m["filename"] ?? i.name,
    purpose: m["purpose"] ?? "",
    bytes: i.size,
    createdAt: Number(m["created_at"] ?? 0),
  };
}
