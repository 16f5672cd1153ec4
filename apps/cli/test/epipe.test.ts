// `tessera jobs | head -1` crashed with an EPIPE stack trace (issue 12): a
// reader that closes stdout early now ends every command quietly, exit 0
// (as ripgrep does: the reader had all it wanted; nothing failed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { JobStore, connectNats } from "@tessera/nats";
import { builtEntry, cleanEnv, type CliOutcome } from "./cli-run.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const CLUSTER = fileURLToPath(new URL("../../../examples/clusters/h100-ddr5-nvme.yaml", import.meta.url));

/** Runs the CLI with a stdout whose reader is gone before the CLI writes anything. */
function withClosedStdout(args: string[]): Promise<CliOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [builtEntry, ...args], {
      env: cleanEnv(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.destroy();
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: "", stderr });
    });
  });
}

test("a closed stdout ends `tessera plan` quietly with exit 0", async () => {
  const r = await withClosedStdout([
    "plan",
    "--cluster",
    CLUSTER,
    "--model",
    "Llama-2-7B",
    "--batch",
    "8",
    "--prompt-tokens",
    "512",
    "--output-tokens",
    "128",
  ]);
  assert.equal(r.stderr, "");
  assert.equal(r.code, 0);
});

test("a closed stdout ends `tessera jobs` quietly with exit 0", async (t) => {
  const prefix = `epipe${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "cli-epipe-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  const input = new TextEncoder().encode('{"id":"a","prompt":"Once"}\n');
  for (let i = 0; i < 20; i++) await store.submit({ jobId: `job${i}`, input });
  const r = await withClosedStdout(["jobs", "--nats", SERVERS, "--nats-prefix", prefix]);
  assert.equal(r.stderr, "");
  assert.equal(r.code, 0);
});
