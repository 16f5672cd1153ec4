/**
 * A keyed async mutex (issue 13, the quota race): tasks of one key run one
 * at a time, in call order; tasks of different keys never wait for each
 * other. Each key's {@link Mutex} (async-mutex) lives while a task of it
 * runs or waits, so the map holds only the keys in use.
 */
import { Mutex } from "async-mutex";

/** Runs `task` once every earlier task of `key` has settled; resolves or rejects as `task` does. */
export type KeyedLock = <T>(key: string, task: () => Promise<T>) => Promise<T>;

/** A new {@link KeyedLock} (see the file comment). */
export function createKeyedLock(): KeyedLock {
  const locks = new Map<string, { mutex: Mutex; users: number }>();
  return async <T>(key: string, task: () => Promise<T>): Promise<T> => {
    let lock = locks.get(key);
    if (!lock) locks.set(key, (lock = { mutex: new Mutex(), users: 0 }));
    lock.users++;
    try {
      return await lock.mutex.runExclusive(task);
    } finally {
      if (--lock.users === 0) locks.delete(key);
    }
  };
}
