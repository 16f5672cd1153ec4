/**
 * Done-when #1 of issue 2: `tessera run` on stories260K with no prompt (BOS
 * only), greedy, 256 positions, reproduces llama2.c run.c's reference text
 * exactly, with the KV cache on the memory-node and on the storage-node.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { repoRoot } from "@tessera/cli";
import { parseJsonl, referenceText, runCli } from "./helpers.js";
import { ATTENTION_ROLES } from "@tessera/core";

const readme = join(repoRoot, "../shared/models/README.md");

for (const kv of ATTENTION_ROLES) {
  test(`tessera run reproduces run.c's reference text with the KV cache on the ${kv}-node`, async () => {
    const expected = await referenceText(readme);
    const run = await runCli([
      "run",
      "--prompt",
      "",
      "--max-tokens",
      "256",
      "--temperature",
      "0",
      "--kv",
      kv,
      "--quiet",
    ]);
    assert.equal(run.code, 0, run.stderr);
    const [line, ...rest] = parseJsonl<{ completion: string; kv_node: string; finish_reason: string }>(run.stdout);
    assert.equal(rest.length, 0);
    assert.ok(line!.kv_node.startsWith(`${kv}@127.0.0.1:`), line!.kv_node);
    assert.equal(line!.completion, expected);
  });
}
