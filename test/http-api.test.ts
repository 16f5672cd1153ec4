/**
 * Issue 14, the OpenAI-compatible HTTP API (services/coordinator/src/http/),
 * driven with the official `openai` client against a real in-process
 * cluster on stories260K: completions give exactly a direct Generate's
 * tokens (and run.c's reference text for the BOS-only prompt); streaming
 * gives the same text; `stop` cuts it; models, errors (404 model_not_found,
 * 400 naming the parameter, 401 without a token) are OpenAI's; chat renders
 * the model folder's chat_template and gives the completion of that text.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { get } from "node:https";
import { join } from "node:path";
import OpenAI, { APIError, AuthenticationError, BadRequestError, NotFoundError } from "openai";
import { repoRoot } from "@tessera/model";
import { createHttpApi, type CoordinatorOptions } from "@tessera/coordinator";
import { loadTls } from "@tessera/proto";
import { startMetrics } from "@tessera/telemetry";
import { bundled, generate, startInProcessCluster, tempDir } from "@tessera/testing";
import { referenceText, runCli } from "./helpers.js";
import { one, parsePrometheus, scrape } from "./prometheus.js";

const PROMPT = "Once upon a time";
const TOKEN = "acme-token-0123456789";

/** A cluster with its HTTP API, and an `openai` client of it. */
async function setUp(t: TestContext, coordinator: Partial<CoordinatorOptions> = {}, apiKey = "unused") {
  const cluster = await startInProcessCluster(t, { coordinator });
  const api = createHttpApi(cluster.coordinator, { port: 0 });
  await api.start();
  t.after(() => api.close());
  const client = new OpenAI({ baseURL: `${api.url}/v1`, apiKey, maxRetries: 0 });
  return { cluster, api, client };
}

/** stories260K as a Hugging Face folder with a ChatML chat template in its tokenizer_config.json. */
async function chatModel(t: TestContext): Promise<string> {
  const tmp = await tempDir("tessera-http-");
  t.after(() => tmp.remove());
  const dir = join(tmp.path, "stories-chat");
  const exp = await runCli([
    "model",
    "export-hf",
    "--model",
    bundled.model,
    "--tokenizer",
    bundled.tokenizer,
    "--out",
    dir,
  ]);
  assert.equal(exp.code, 0, exp.stderr);
  const configFile = join(dir, "tokenizer_config.json");
  const config = JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>;
  config["chat_template"] =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  await writeFile(configFile, JSON.stringify(config));
  return dir;
}

test("completions equal a direct Generate, streamed or not; stop cuts the text; models and errors are OpenAI's", async (t) => {
  const { cluster, client } = await setUp(t);

  const models = await client.models.list();
  assert.deepEqual(
    models.data.map((m) => [m.id, m.object]),
    [["stories260K", "model"]],
  );

  // Greedy: exactly the tokens and text of a direct Generate of the same prompt.
  const direct = await generate(cluster.address, {
    prompts: [{ id: "p", prompt: PROMPT }],
    sampling: { temperature: 0, maxTokens: 40 },
  });
  const want = direct.results.get("p")!;
  const res = await client.completions.create({ model: "stories260K", prompt: PROMPT, max_tokens: 40, temperature: 0 });
  assert.equal(res.object, "text_completion");
  assert.equal(res.choices.length, 1);
  assert.equal(res.choices[0]!.text, want.completion);
  assert.equal(res.choices[0]!.finish_reason, want.finishReason === "length" ? "length" : "stop");
  assert.deepEqual(res.usage, {
    prompt_tokens: want.promptTokenIds.length,
    completion_tokens: want.completionTokenIds.length,
    total_tokens: want.promptTokenIds.length + want.completionTokenIds.length,
  });

  // The BOS-only prompt, 256 positions: run.c's reference text.
  const bos = await client.completions.create({ model: "stories260K", prompt: "", max_tokens: 256, temperature: 0 });
  assert.equal(bos.choices[0]!.text, await referenceText(join(repoRoot, "../shared/models/README.md")));

  // Streaming: token by token, the same text, usage in the last chunk, then [DONE] (the client's end).
  const stream = await client.completions.create({
    model: "stories260K",
    prompt: PROMPT,
    max_tokens: 40,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  const pieces: string[] = [];
  let finish: string | null = null;
  let usage: unknown;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      pieces.push(c.text);
      finish = c.finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(pieces.filter(Boolean).length > 10, `streamed in ${pieces.length} chunks`);
  assert.equal(pieces.join(""), want.completion);
  assert.equal(finish, res.choices[0]!.finish_reason);
  assert.deepEqual(usage, res.usage);

  // stop: the text ends before the first stop string, streamed or not.
  const word = want.completion.trim().split(/\s+/)[3]!;
  const cutAt = want.completion.indexOf(word);
  const stopped = await client.completions.create({
    model: "stories260K",
    prompt: PROMPT,
    max_tokens: 40,
    temperature: 0,
    stop: [word, "\u0000never"],
  });
  assert.equal(stopped.choices[0]!.text, want.completion.slice(0, cutAt));
  assert.equal(stopped.choices[0]!.finish_reason, "stop");
  assert.ok(stopped.usage!.completion_tokens < want.completionTokenIds.length, "generation stopped at the stop string");
  const streamedStop = await client.completions.create({
    model: "stories260K",
    prompt: PROMPT,
    max_tokens: 40,
    temperature: 0,
    stop: word,
    stream: true,
  });
  let text = "";
  for await (const chunk of streamedStop) text += chunk.choices.map((c) => c.text).join("");
  assert.equal(text, want.completion.slice(0, cutAt));

  // n copies of each prompt of an array, and echo.
  const many = await client.completions.create({
    model: "stories260K",
    prompt: [PROMPT, "Sam found"],
    n: 2,
    max_tokens: 40,
    temperature: 0,
    echo: true,
  });
  assert.deepEqual(
    many.choices.map((c) => [c.index, c.text.startsWith(PROMPT)]),
    [
      [0, true],
      [1, true],
      [2, false],
      [3, false],
    ],
  );
  assert.equal(many.choices[1]!.text, PROMPT + want.completion);

  // Errors: OpenAI's bodies and statuses.
  await assert.rejects(client.completions.create({ model: "no-such-model", prompt: PROMPT }), (err: unknown) => {
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.status, 404);
    assert.equal(err.code, "model_not_found");
    assert.equal(err.param, "model");
    assert.match(err.message, /no-such-model/);
    return true;
  });
  for (const [param, body] of [
    ["presence_penalty", { presence_penalty: 0.5 }],
    ["logprobs", { logprobs: 2 }],
    ["top_k", { top_k: 5 }],
    ["bogus", { bogus: 1 }],
    ["temperature", { temperature: 7 }],
    ["seed", { seed: 0 }],
  ] as const) {
    await assert.rejects(
      client.completions.create({ model: "stories260K", prompt: PROMPT, ...body } as never),
      (err: unknown) => {
        assert.ok(err instanceof BadRequestError, String(err));
        assert.equal(err.param, param);
        assert.equal(err.type, "invalid_request_error");
        assert.match(err.message, new RegExp(param));
        return true;
      },
    );
  }
  await assert.rejects(
    client.completions.create({ model: "stories260K", prompt: `${PROMPT} `.repeat(200), max_tokens: 4 }),
    (err: unknown) => {
      assert.ok(err instanceof BadRequestError, String(err));
      assert.equal(err.code, "context_length_exceeded");
      assert.equal(err.param, "prompt");
      assert.match(err.message, /maximum context length is 512 tokens/);
      return true;
    },
  );
  await assert.rejects(
    client.chat.completions.create({ model: "stories260K", messages: [{ role: "user", content: "hi" }] }),
    (err: unknown) => {
      assert.ok(err instanceof BadRequestError);
      assert.equal(err.code, "no_chat_template");
      assert.match(err.message, /no chat template/);
      return true;
    },
  );
});

test("chat renders the model's chat_template and returns the completion of the rendered prompt", async (t) => {
  const dir = await chatModel(t);
  const { client } = await setUp(t, { models: [`${dir},tokenizer=${join(dir, "tokenizer.json")}`] });
  const messages = [
    { role: "system" as const, content: "You tell stories." },
    { role: "user" as const, content: "Tell me about a cat." },
  ];
  const rendered =
    "<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me about a cat.<|im_end|>\n" +
    "<|im_start|>assistant\n";
  const completion = await client.completions.create({
    model: "stories-chat",
    prompt: rendered,
    max_tokens: 30,
    temperature: 0,
  });
  const chat = await client.chat.completions.create({
    model: "stories-chat",
    messages,
    max_tokens: 30,
    temperature: 0,
  });
  assert.equal(chat.object, "chat.completion");
  assert.equal(chat.choices[0]!.message.role, "assistant");
  assert.equal(chat.choices[0]!.message.content, completion.choices[0]!.text);
  assert.deepEqual(chat.usage, completion.usage);

  const stream = await client.chat.completions.create({
    model: "stories-chat",
    messages,
    max_tokens: 30,
    temperature: 0,
    stream: true,
  });
  let text = "";
  let role: string | undefined;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    for (const c of chunk.choices) {
      role ??= c.delta.role;
      text += c.delta.content ?? "";
    }
  }
  assert.equal(role, "assistant");
  assert.equal(text, completion.choices[0]!.text);
});

test("with --tokens a request needs a bearer token (401 without); /health answers probes without one", async (t) => {
  const tmp = await tempDir("tessera-http-");
  t.after(() => tmp.remove());
  const tokensFile = join(tmp.path, "tokens.yaml");
  await writeFile(tokensFile, `tokens:\n  - { tenant: acme, token: "${TOKEN}" }\n`);
  const { api, client } = await setUp(t, { tokensFile }, TOKEN);
  assert.equal((await client.models.list()).data[0]!.id, "stories260K");
  const res = await client.completions.create({ model: "stories260K", prompt: PROMPT, max_tokens: 8, temperature: 0 });
  assert.equal(res.usage!.completion_tokens, 8);
  // A wrong token, and none at all (the client's Authorization header removed).
  for (const headers of [{ Authorization: "Bearer wrong-token" }, { Authorization: null }]) {
    const stranger = new OpenAI({ baseURL: `${api.url}/v1`, apiKey: "x", defaultHeaders: headers, maxRetries: 0 });
    await assert.rejects(stranger.models.list(), (err: unknown) => {
      assert.ok(err instanceof AuthenticationError, String(err));
      assert.equal(err.status, 401);
      return true;
    });
  }
  const health = await fetch(`${api.url}/health`);
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok", gpu_nodes: 1, kv_nodes: 1 });
});

test("GET /metrics on the HTTP port is the metrics port's scrape, without a token; 404 metrics_off without one", async (t) => {
  const metrics = await startMetrics({
    serviceName: "tessera-coordinator",
    role: "coordinator",
    nodeId: "h1",
    port: 0,
  });
  t.after(() => metrics.shutdown());
  const tmp = await tempDir("tessera-http-");
  t.after(() => tmp.remove());
  const tokensFile = join(tmp.path, "tokens.yaml");
  await writeFile(tokensFile, `tokens:\n  - { tenant: acme, token: "${TOKEN}" }\n`);
  const { api, client } = await setUp(t, { tokensFile }, TOKEN);
  const res = await client.completions.create({ model: "stories260K", prompt: PROMPT, max_tokens: 12, temperature: 0 });
  const completionTokens = res.usage!.completion_tokens;
  assert.ok(completionTokens > 0);

  // No Authorization header: Prometheus scrapes carry none.
  const scraped = await fetch(`${api.url}/metrics`);
  assert.equal(scraped.status, 200);
  assert.match(scraped.headers.get("content-type") ?? "", /^text\/plain/);
  const http = parsePrometheus(await scraped.text());
  const labels = { model_name: "stories260K", otel_scope_name: "@tessera/coordinator" };
  assert.equal(one(http, "tessera_generation_tokens_total", labels).value, completionTokens);
  assert.equal(one(http, "tessera_prompt_tokens_total", labels).value, res.usage!.prompt_tokens);
  // One registry: the metrics port shows the same series with the same value (none doubled).
  const port = await scrape(metrics.url);
  assert.equal(one(port, "tessera_generation_tokens_total", labels).value, completionTokens);
  assert.deepEqual(http.map((x) => x.name).sort(), port.map((x) => x.name).sort());

  await metrics.shutdown();
  const off = await fetch(`${api.url}/metrics`);
  assert.equal(off.status, 404);
  assert.equal(((await off.json()) as { error: { code: string } }).error.code, "metrics_off");
});

test("/health is 503 saying why while no KV node is up, 200 again once one is; a body over the limit is a 413", async (t) => {
  const { cluster, api } = await setUp(t);
  const memory = cluster.memories[0]!.address;
  // As a job that finds the memory-node lost marks it.
  cluster.coordinator.membership.markDown(memory, "lost");
  const health = await fetch(`${api.url}/health`);
  assert.equal(health.status, 503);
  const body = (await health.json()) as { error: { message: string; type: string } };
  assert.equal(body.error.type, "service_unavailable");
  assert.match(body.error.message, /no memory- or storage-node is up/);
  cluster.coordinator.membership.markUp(memory);
  assert.equal((await fetch(`${api.url}/health`)).status, 200);

  // A body over the limit: 413 with OpenAI's error body.
  const small = createHttpApi(cluster.coordinator, { port: 0, bodyLimitBytes: 1000 });
  await small.start();
  t.after(() => small.close());
  const client = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: "unused", maxRetries: 0 });
  await assert.rejects(
    client.completions.create({ model: "stories260K", prompt: "x".repeat(2000) }),
    (err: unknown) => {
      assert.ok(err instanceof APIError, String(err));
      assert.equal(err.status, 413);
      assert.equal(err.type, "invalid_request_error");
      return true;
    },
  );
});

test("over TLS the HTTP API is https with the coordinator's certificate, and refuses plain http", async (t) => {
  const tmp = await tempDir("tessera-http-");
  t.after(() => tmp.remove());
  const certs = join(tmp.path, "certs");
  const made = await runCli(["certs", "--out", certs, "--quiet"]);
  assert.equal(made.code, 0, made.stderr);
  const ca = join(certs, "ca.pem");
  const security = loadTls({ ca, cert: join(certs, "coordinator.pem"), key: join(certs, "coordinator-key.pem") });
  const cluster = await startInProcessCluster(t);
  const api = createHttpApi(cluster.coordinator, { port: 0, security });
  await api.start();
  t.after(() => api.close());
  assert.match(api.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  // The openai client has no CA option without undici; one GET checks the certificate chain.
  const body = await new Promise<string>((resolve, reject) => {
    get(`${api.url}/v1/models`, { ca: readFileSync(ca) }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => (text += c));
      res.on("end", () => resolve(text));
    }).on("error", reject);
  });
  assert.equal((JSON.parse(body) as { data: { id: string }[] }).data[0]!.id, "stories260K");
  await assert.rejects(fetch(api.url.replace("https:", "http:") + "/v1/models"));
});

test("close() lets a stream in flight finish, refuses new requests, and cancels what outlasts the grace", async (t) => {
  const { cluster, api, client } = await setUp(t);
  const full = await client.completions.create({ model: "stories260K", prompt: "", max_tokens: 200, temperature: 0 });
  const stream = await client.completions.create({
    model: "stories260K",
    prompt: "",
    max_tokens: 200,
    temperature: 0,
    stream: true,
  });
  let text = "";
  let closing: Promise<void> | undefined;
  for await (const chunk of stream) {
    text += chunk.choices.map((c) => c.text).join("");
    closing ??= api.close();
  }
  await closing;
  assert.equal(text, full.choices[0]!.text);
  await assert.rejects(client.models.list());

  // A grace of 0: the stream in flight is cancelled, its last event OpenAI's error body.
  const hasty = createHttpApi(cluster.coordinator, { port: 0, shutdownGraceMs: 1 });
  await hasty.start();
  const hastyClient = new OpenAI({ baseURL: `${hasty.url}/v1`, apiKey: "unused", maxRetries: 0 });
  const cut = await hastyClient.completions.create({
    model: "stories260K",
    prompt: "",
    max_tokens: 200,
    temperature: 0,
    stream: true,
  });
  let stopping: Promise<void> | undefined;
  await assert.rejects(
    (async () => {
      for await (const chunk of cut) {
        void chunk;
        stopping ??= hasty.close();
      }
    })(),
    (err: unknown) => {
      assert.ok(err instanceof APIError, String(err));
      assert.match(err.message, /cancel/);
      return true;
    },
  );
  await stopping;
});
