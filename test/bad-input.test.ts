/**
 * Bad input of issue 2: every bad line of a prompts file is reported before
 * anything runs; a prompt longer than the context fails alone; a missing
 * model names the file; an unreachable coordinator names its address; and
 * SIGTERM stops an embedded cluster without leaving processes or files.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { generate, tempDir } from "@tessera/testing";
import { startTestCluster, parseJsonl, runCli } from "./helpers.js";

test("a malformed prompts file is rejected before anything runs, listing every bad line", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const file = join(dir.path, "prompts.jsonl");
  await writeFile(
    file,
    [
      `{"id": "a", "prompt": "fine"}`,
      `{"id": "b", "prompt": 7}`,
      `not json`,
      ``,
      `{"id": "a", "prompt": "again"}`,
      `{"prompt": "no id"}`,
      `{"id": "c", "prompt": "ok", "max_tokens": -1}`,
    ].join("\n"),
  );
  const out = join(dir.path, "results.jsonl");
  const run = await runCli(["run", "--prompts", file, "--out", out]);
  assert.equal(run.code, 1);
  for (const line of [2, 3, 5, 6, 7]) assert.match(run.stderr, new RegExp(`line ${line}:`), run.stderr);
  assert.doesNotMatch(run.stderr, /line 1:|line 4:/);
  assert.doesNotMatch(run.stderr, /starting local cluster/);
  assert.deepEqual(await readdir(dir.path), ["prompts.jsonl"]);
});

test("issue 13: a prompts line that is not UTF-8 or over the line limit is refused naming it, before anything runs", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const file = join(dir.path, "prompts.jsonl");
  await writeFile(
    file,
    Buffer.concat([
      Buffer.from(`{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "caf`),
      Buffer.from([0xc3]),
      Buffer.from(` private"}\n{"id": "c", "prompt": "${"y".repeat(1024 * 1024)}"}\n`),
    ]),
  );
  const run = await runCli(["run", "--prompts", file, "--out", join(dir.path, "results.jsonl")]);
  assert.equal(run.code, 1);
  assert.match(run.stderr, /prompts\.jsonl: 2 bad line\(s\):\n {2}line 2: not valid UTF-8 \(byte 27 of the line\)\n/);
  assert.match(run.stderr, /line 3: 1048601 bytes is over the limit of 1048576 bytes per line/);
  assert.doesNotMatch(run.stderr, /private|yyyy|starting local cluster/);
  assert.deepEqual(await readdir(dir.path), ["prompts.jsonl"]);
});

test("a missing model file is named in the error", async () => {
  const run = await runCli([
    "run",
    "--model",
    "/nonexistent/model.bin",
    "--tokenizer",
    "/nonexistent/tok.bin",
    "--prompt",
    "hi",
    "--quiet",
  ]);
  assert.equal(run.code, 1);
  assert.match(run.stderr, /\/nonexistent\/model\.bin/);
});

test("an unreachable coordinator is named by address", async () => {
  const run = await runCli(["run", "--cluster", "127.0.0.1:9", "--plaintext", "--prompt", "hi", "--quiet"]);
  assert.equal(run.code, 1);
  assert.match(run.stderr, /127\.0\.0\.1:9/);
});

test("a prompt longer than the context gets an error result while the others complete", async (t) => {
  const cluster = await startTestCluster();
  t.after(() => cluster.stop());
  const long = "Once upon a time there was a cat. ".repeat(100);
  const sampling = { temperature: 0, maxTokens: 16 };
  const solo = await generate(cluster.address, {
    prompts: [
      { id: "short", prompt: "The cat" },
      { id: "other", prompt: "A dog" },
    ],
    sampling,
  });
  const outcome = await generate(cluster.address, {
    prompts: [
      { id: "short", prompt: "The cat" },
      { id: "long", prompt: long },
      { id: "other", prompt: "A dog" },
    ],
    sampling,
  });
  assert.equal(outcome.results.get("long")!.finishReason, "error");
  assert.match(outcome.results.get("long")!.error, /context is 512 positions/);
  for (const id of ["short", "other"]) {
    const r = outcome.results.get(id)!;
    assert.equal(r.error, "");
    assert.equal(r.completionTokenIds.length, 16);
    assert.deepEqual(r.completionTokenIds, solo.results.get(id)!.completionTokenIds);
  }
  assert.equal(outcome.summary?.errors, 1);
});

test("SIGTERM stops `tessera run` and its local cluster, leaving no processes or temporary files", async (t) => {
  const tmp = await tempDir();
  t.after(() => tmp.remove());
  await mkdir(join(tmp.path, "t"));
  const env = { ...process.env, TMPDIR: join(tmp.path, "t") };
  const out = join(tmp.path, "results.jsonl");
  let sent = false;
  const run = await runCli(["run", "--prompt", "", "--max-tokens", "4096", "--out", out], {
    env,
    onStderr: (chunk, child) => {
      // Signal once the decode is under way (the progress line shows tokens).
      if (!sent && /tokens\/s/.test(chunk)) {
        sent = true;
        child.kill("SIGTERM");
      }
    },
  });
  assert.ok(sent, run.stderr);
  assert.equal(run.code, 130, run.stderr);
  assert.deepEqual(await readdir(join(tmp.path, "t")), [], "temporary files left behind");
  assert.deepEqual(
    await readdir(tmp.path).then((f) => f.filter((n) => n.startsWith("results"))),
    [],
    "partial results left behind",
  );
  // No process of that run is still alive: its children get a TMPDIR inside ours.
  const alive: string[] = [];
  for (const pid of await readdir("/proc").then((e) => e.filter((n) => /^\d+$/.test(n)))) {
    const environ = await readFile(`/proc/${pid}/environ`, "utf8").catch(() => "");
    if (environ.split("\0").some((v) => v.startsWith(`TMPDIR=${env.TMPDIR}`))) alive.push(pid);
  }
  assert.deepEqual(alive, []);
});

test("results of a run are written as JSONL with the documented fields", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const out = join(dir.path, "results.jsonl");
  const run = await runCli(["run", "--max-tokens", "8", "--out", out, "--quiet"]);
  assert.equal(run.code, 0, run.stderr);
  const lines = parseJsonl<Record<string, unknown>>(await readFile(out, "utf8"));
  assert.equal(lines.length, 16);
  assert.deepEqual(Object.keys(lines[0]!).sort(), [
    "completion",
    "completion_token_ids",
    "completion_tokens",
    "finish_reason",
    "id",
    "kv_node",
    "prompt",
    "prompt_tokens",
    "timings",
  ]);
});
