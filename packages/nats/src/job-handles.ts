/**
 * The JetStream handles of one prefix's job queue (issue 5): the work-queue
 * stream, the job-state bucket and the object store of inputs and results,
 * declared by {@link openJobHandles} and removed by {@link destroyJobHandles}.
 * Internal to @tessera/nats: callers use {@link JobStore}.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import {
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import { jobNames, type JobNames } from "./job-keys.js";
import { JOB_PRIORITIES } from "./job-state.js";

/** What every part of the job queue works on: the connection, the names and their JetStream handles. */
export interface JobHandles {
  readonly nc: NatsConnection;
  readonly names: JobNames;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** The job-state bucket ({@link JobNames.stateBucket}). */
  readonly kv: KV;
  /** The object store of inputs and results ({@link JobNames.dataBucket}). */
  readonly obj: ObjectStore;
}

/**
 * Declares (or binds to) the work-queue stream, the job-state bucket and
 * the object store under `prefix`.
 * @throws JobError for a bad prefix; NATS errors when JetStream is off.
 */
export async function openJobHandles(nc: NatsConnection, prefix: string | undefined): Promise<JobHandles> {
  const names = jobNames(prefix);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const config = {
    name: names.stream,
    subjects: JOB_PRIORITIES.map(names.subject),
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
  };
  try {
    await jsm.streams.add(config);
  } catch (err) {
    // Declared already (maybe with other limits): use it as it is.
    await jsm.streams.info(names.stream).catch(() => {
      throw err;
    });
  }
  const kv = await new Kvm(js).create(names.stateBucket, { history: 1 });
  const obj = await new Objm(js).create(names.dataBucket);
  return { nc, names, js, jsm, kv, obj };
}

/** Deletes the stream (and so its consumers) and both buckets of `h`'s prefix; what is missing is no error. */
export async function destroyJobHandles(h: JobHandles): Promise<void> {
  await h.jsm.streams.delete(h.names.stream).catch(() => false);
  await h.kv.destroy().catch(() => false);
  await h.obj.destroy().catch(() => false);
}
