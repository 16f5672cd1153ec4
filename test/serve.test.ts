/**
 * Issue 14, `tessera serve`: the embedded local cluster kept up with the
 * OpenAI-compatible HTTP API; it prints the URL once it answers, serves
 * the `openai` client, and exits 0 on SIGTERM (cluster stopped).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import OpenAI from "openai";
import { cliEntry } from "@tessera/cli";
import { freePort } from "@tessera/testing";

test("tessera serve answers the openai client and exits 0 on SIGTERM", async (t) => {
  const port = await freePort();
  const child = spawn(process.execPath, [cliEntry, "serve", "--http-port", String(port), "--quiet"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      out += c;
      const line = /^(http:\/\/\S+)\n/m.exec(out);
      if (line) resolve(line[1]!);
    });
    void exited.then((code) => reject(new Error(`tessera serve exited (${code}) before serving:\n${stderr}`)));
  });
  assert.equal(url, `http://127.0.0.1:${port}/v1`);
  const client = new OpenAI({ baseURL: url, apiKey: "unused", maxRetries: 0 });
  assert.deepEqual(
    (await client.models.list()).data.map((m) => m.id),
    ["stories260K"],
  );
  const res = await client.completions.create({ model: "stories260K", prompt: "Once", max_tokens: 8, temperature: 0 });
  assert.equal(res.usage!.completion_tokens, 8);
  child.kill("SIGTERM");
  assert.equal(await exited, 0, stderr);
});
