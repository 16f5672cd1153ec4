// `--attention-kernel NAME` on `tessera node memory` and `tessera node
// storage` (issue 12, item 4): an unknown name is a usage error (exit 2)
// naming the registered kernels; a known one reaches the node's options
// (the --profile-only table shows the compiled attentionKernel, and the
// profile it prints measured that kernel).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { attentionKernelNames } from "@tessera/attention";
import { cleanEnv, tessera } from "./cli-run.js";

const known = new RegExp(`Allowed choices are ${attentionKernelNames().join(", ")}\\b`);

test("--attention-kernel nope is refused with exit 2, naming the known kernels", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "tessera-kernel-flag-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const env = cleanEnv();
  for (const args of [
    ["node", "memory", "--attention-kernel", "nope"],
    ["node", "storage", "--data-dir", dir, "--attention-kernel", "nope"],
  ]) {
    const r = await tessera(args, { env });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--attention-kernel <name>' argument 'nope' is invalid/);
    assert.match(r.stderr, known);
  }
  const fromEnv = await tessera(["node", "memory"], { env: cleanEnv({ TESSERA_ATTENTION_KERNEL: "nope" }) });
  assert.equal(fromEnv.code, 2, fromEnv.stderr);
  assert.match(fromEnv.stderr, known);
});

test("--attention-kernel js reaches a memory-node's options: its profile measures that kernel", async () => {
  const r = await tessera(["node", "memory", "--attention-kernel", "js", "--profile-only"], {
    env: cleanEnv(),
    timeoutMs: 120_000,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^attention kernel\s+js$/m);
  const profile = JSON.parse(r.stdout) as { role: string; memory?: { kernelFlops?: number } };
  assert.equal(profile.role, "memory");
  assert.ok((profile.memory?.kernelFlops ?? 0) > 0, r.stdout);
  const dflt = await tessera(["node", "memory", "--profile-only"], { env: cleanEnv(), timeoutMs: 120_000 });
  assert.equal(dflt.code, 0, dflt.stderr);
  assert.match(dflt.stderr, /^attention kernel\s+wasm$/m);
});
