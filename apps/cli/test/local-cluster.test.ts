// The embedded local cluster of `tessera run` (issue 12's traps): with
// TESSERA_METRICS_PORT set every child took the same port, the run hung,
// ignored the first SIGTERM and left its temp directory behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { builtEntry, cleanEnv, tessera, type CliOutcome } from "./cli-run.js";

/** A port free on loopback right now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** A TMPDIR of the test's own, to see what `tessera run` leaves there. */
async function ownTmp(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "cli-local-cluster-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test("with TESSERA_METRICS_PORT set, `tessera run` runs, exits 0 and removes its temp directory", async (t) => {
  const tmp = await ownTmp(t);
  const env = cleanEnv({ TESSERA_METRICS_PORT: String(await freePort()), TMPDIR: tmp });
  const r = await tessera(["run", "--prompt", "", "--max-tokens", "4", "--quiet"], { env, timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim().split("\n").length, 1, r.stdout);
  assert.deepEqual(await readdir(tmp), [], "no temp directory left behind");
});

test("a child that fails to start fails the run promptly with its error", async (t) => {
  const tmp = await ownTmp(t);
  const t0 = Date.now();
  const r = await tessera(["run", "--prompt", "", "--max-tokens", "4", "--quiet", "--memory-capacity", "lots"], {
    env: cleanEnv({ TMPDIR: tmp }),
    timeoutMs: 120_000,
  });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /memory process exited \(2\) before it was ready/);
  assert.match(r.stderr, /lots/);
  assert.ok(Date.now() - t0 < 100_000, "promptly");
  assert.deepEqual(await readdir(tmp), [], "no temp directory left behind");
});

test("one SIGTERM while the local cluster starts stops `tessera run` and removes its temp directory", async (t) => {
  const tmp = await ownTmp(t);
  // The gpu-node's process blocks for two minutes before it runs anything:
  // the cluster is still starting when the signal comes.
  const preload = join(await ownTmp(t), "stall-gpu-node.cjs");
  await writeFile(
    preload,
    'if (process.argv[2] === "node" && process.argv[3] === "gpu") ' +
      "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 120000);\n",
  );
  const r = await new Promise<CliOutcome>((resolve, reject) => {
    const child = spawn(process.execPath, [builtEntry, "run", "--prompt", "", "--max-tokens", "4"], {
      env: cleanEnv({
        TESSERA_METRICS_PORT: "9464",
        TMPDIR: tmp,
        NODE_OPTIONS: `${process.env["NODE_OPTIONS"] ?? ""} --require ${preload}`.trim(),
      }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let signalled = false;
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c;
      if (!signalled && stderr.includes("starting local cluster")) {
        signalled = true;
        setTimeout(() => child.kill("SIGTERM"), 500);
      }
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 45_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
  assert.equal(r.signal, null, `stopped by itself after one SIGTERM, not killed: ${r.stderr}`);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /interrupted while the local cluster started/);
  assert.deepEqual(await readdir(tmp), [], "no temp directory left behind");
});
