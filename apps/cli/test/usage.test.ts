// The traps of issue 12 a new user hits on the command line itself: no
// --version, usage errors sharing exit code 1 with real failures, and
// TESSERA_CLUSTER ignored by `tessera run` and `tessera nodes`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { cleanEnv, tessera } from "./cli-run.js";

const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8")) as { version: string };

test("tessera --version prints the package's version", async () => {
  const r = await tessera(["--version"], { env: cleanEnv() });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${pkg.version}\n`);
});

test("usage errors exit 2, a real failure exits 1", async () => {
  const env = cleanEnv();
  const unknown = await tessera(["jobs", "--no-such-flag"], { env });
  assert.equal(unknown.code, 2, unknown.stderr);
  assert.match(unknown.stderr, /unknown option '--no-such-flag'/);
  const missing = await tessera(["status"], { env });
  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /missing required argument 'id'/);
  const bad = await tessera(["run", "--max-tokens", "zero"], { env });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--max-tokens must be an integer >= 1/);
  const choice = await tessera(["run", "--kv", "nowhere"], { env });
  assert.equal(choice.code, 2, choice.stderr);
  const mandatory = await tessera(["nodes"], { env });
  assert.equal(mandatory.code, 2, mandatory.stderr);
  assert.match(mandatory.stderr, /required option '--cluster <host:port>' not specified/);
  const command = await tessera(["no-such-command"], { env });
  assert.equal(command.code, 2, command.stderr);
  // A real failure: nothing listens there.
  const failed = await tessera(["model", "info", "/nonexistent/model.bin"], { env });
  assert.equal(failed.code, 1, failed.stderr);
  const help = await tessera(["--help"], { env });
  assert.equal(help.code, 0, help.stderr);
});

test("TESSERA_CLUSTER is read by `tessera run` and `tessera nodes` as --cluster", async () => {
  // A port nothing listens on: both must try it (and fail naming it), not start a local cluster.
  const env = cleanEnv({ TESSERA_CLUSTER: "127.0.0.1:1", TESSERA_PLAINTEXT: "1" });
  const nodes = await tessera(["nodes"], { env, timeoutMs: 30_000 });
  assert.notEqual(nodes.code, 0);
  assert.notEqual(nodes.code, 2, `read as given: ${nodes.stderr}`);
  assert.match(nodes.stderr, /127\.0\.0\.1:1/);
  const run = await tessera(["run", "--prompt", "", "--max-tokens", "2", "--quiet"], { env, timeoutMs: 60_000 });
  assert.doesNotMatch(run.stderr, /starting local cluster/);
  assert.notEqual(run.code, 0);
  assert.match(run.stderr, /127\.0\.0\.1:1/);
});

test("issue 13: a size flag that is not a size (10XB, 1e400, 8G B) is a usage error naming the flag", async () => {
  const env = cleanEnv();
  for (const [args, flag] of [
    [["node", "memory", "--plaintext", "--capacity", "10XB"], "--capacity"],
    [["node", "storage", "--plaintext", "--data-dir", "/nonexistent", "--buffer", "1e400"], "--buffer"],
    [["coordinator", "--plaintext", "--limit-prompt-bytes", "8G B"], "--limit-prompt-bytes"],
    [["coordinator", "--plaintext", "--limit-request-bytes=-1"], "--limit-request-bytes"],
    [["coordinator", "--plaintext", "--tenant-max-bytes", "4GB B"], "--tenant-max-bytes"],
  ] as const) {
    const r = await tessera([...args], { env });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`${flag}: "[^"]+" is not a size: .*powers of 1024`), r.stderr);
  }
});

test("issue 13: --job-retention / --job-sweep that are not durations (10w, -1d, 1e3) are usage errors naming the flag", async () => {
  const env = cleanEnv();
  for (const [flag, value] of [
    ["--job-retention", "10w"],
    ["--job-retention", "-1d"],
    ["--job-sweep", "1e3"],
  ] as const) {
    const r = await tessera(["coordinator", "--plaintext", flag, value], { env });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`${flag}: "[^"]+" is not a duration: use milliseconds`), r.stderr);
  }
});
