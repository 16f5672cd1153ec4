import { execFileSync } from "node:child_process";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A temporary directory and its removal. */
export async function tempDir(prefix = "tessera-test-"): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/**
 * A fresh directory with a `size` tmpfs mounted on it (e.g. "2m"), for
 * tests of a full or small disk; `remove()` unmounts it and removes the
 * directory. Undefined where mount is refused (it needs root).
 */
export async function tmpfsDir(size: string): Promise<{ path: string; remove(): Promise<void> } | undefined> {
  const dir = await tempDir("tessera-tmpfs-");
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir.path], { stdio: "ignore" });
  } catch {
    await dir.remove();
    return undefined;
  }
  return {
    path: dir.path,
    async remove() {
      execFileSync("umount", [dir.path], { stdio: "ignore" });
      await dir.remove();
    },
  };
}

/** Writes `bytes` at byte `offset` of the file at `path`, in place (to damage a file on purpose). */
export async function overwriteAt(path: string, offset: number, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, "r+");
  try {
    await fh.write(bytes, 0, bytes.byteLength, offset);
  } finally {
    await fh.close();
  }
}
