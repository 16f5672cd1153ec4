import { test } from "node:test";
import assert from "node:assert/strict";
import { ResultSchema, create } from "@tessera/proto";
import {
  InputFileError,
  detectBatchFormat,
  formatBatchResult,
  parseBatchInput,
  parseOpenAiBatchJsonl,
} from "../src/index.js";

const openAi = (id: string, body: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ custom_id: id, method: "POST", url: "/v1/completions", body, ...extra });

test("the format is detected per file from its first non-blank line", () => {
  assert.equal(detectBatchFormat('\n{"id": "a", "prompt": "x"}\n'), "tessera");
  assert.equal(detectBatchFormat("\uFEFF" + openAi("r1", { prompt: "x" }) + "\n"), "openai");
  assert.equal(detectBatchFormat("not json"), "tessera");
  assert.equal(detectBatchFormat(""), "tessera");
});

test("OpenAI Batch API lines become prompt specs keyed by custom_id", () => {
  const text = [
    openAi("r1", { model: "gpt-x", prompt: "Once upon a time", max_tokens: 8, temperature: 0.5, top_p: 0.9, seed: 7 }),
    "",
    openAi("r2", { prompt: "" }),
  ].join("\r\n");
  const input = parseBatchInput("b.jsonl", text);
  assert.equal(input.format, "openai");
  assert.deepEqual(input.prompts, [
    { id: "r1", prompt: "Once upon a time", line: 1, maxTokens: 8, temperature: 0.5, topP: 0.9, seed: 7 },
    { id: "r2", prompt: "", line: 3 },
  ]);
  assert.deepEqual(parseBatchInput("t.jsonl", '{"id": "a", "prompt": "x"}').prompts, [
    { id: "a", prompt: "x", line: 1 },
  ]);
});

test("a bad OpenAI line is reported with the file, its number and the field", () => {
  const lines = [
    /* 1 */ openAi("ok", { prompt: "fine" }),
    /* 2 */ openAi("u", { prompt: "p" }, { url: "/v1/chat/completions" }),
    /* 3 */ openAi("m", { prompt: "p", max_tokens: 0 }),
    /* 4 */ openAi("ok", { prompt: "duplicate" }),
    /* 5 */ openAi("n", { prompt: "p", n: 2 }),
    /* 6 */ JSON.stringify({ custom_id: "b", method: "POST", url: "/v1/completions" }),
    /* 7 */ openAi("a", { prompt: ["array", "prompt"] }),
    /* 8 */ "{oops",
  ];
  let err: unknown;
  try {
    parseOpenAiBatchJsonl("batch.jsonl", lines.join("\n"));
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof InputFileError);
  assert.equal(err.path, "batch.jsonl");
  const byLine = new Map(err.badLines.map((b) => [b.line, b.message]));
  assert.deepEqual([...byLine.keys()], [2, 3, 4, 5, 6, 7, 8]);
  assert.match(byLine.get(2)!, /field "url"/);
  assert.match(byLine.get(3)!, /field "body\.max_tokens"/);
  assert.match(byLine.get(4)!, /duplicate custom_id "ok" \(first on line 1\)/);
  assert.match(byLine.get(5)!, /unknown field\(s\) "body\.n"/);
  assert.match(byLine.get(6)!, /missing required field "body"/);
  assert.match(byLine.get(7)!, /field "body\.prompt"/);
  assert.match(byLine.get(8)!, /invalid JSON/);
  assert.match(err.message, /^batch\.jsonl: 7 bad line\(s\):\n {2}line 2: /);
  assert.throws(() => parseOpenAiBatchJsonl("e.jsonl", "\n"), /e\.jsonl: 1 bad line\(s\):\n {2}line 0: /);
});

test("results are written back in the input's format", () => {
  const r = create(ResultSchema, {
    id: "r1",
    prompt: "Once",
    completion: " upon",
    promptTokenIds: [1, 403],
    completionTokenIds: [7, 8, 9],
    finishReason: "length",
    kvNode: "memory@127.0.0.1:1",
    timings: { prefillSeconds: 0.1234567, decodeSeconds: 1, totalSeconds: 1.1234567 },
  });
  const ctx = { jobId: "j1", model: "stories260K.bin", created: 1_700_000_000 };
  assert.deepEqual(JSON.parse(formatBatchResult("tessera", r, ctx)), {
    id: "r1",
    prompt: "Once",
    completion: " upon",
    prompt_tokens: 2,
    completion_tokens: 3,
    completion_token_ids: [7, 8, 9],
    finish_reason: "length",
    kv_node: "memory@127.0.0.1:1",
    timings: { prefill_s: 0.123457, decode_s: 1, total_s: 1.123457 },
  });
  const o = JSON.parse(formatBatchResult("openai", r, ctx));
  assert.match(o.id, /^batch_req_[0-9a-f]{24}$/);
  assert.match(o.response.request_id, /^req_[0-9a-f]{24}$/);
  assert.match(o.response.body.id, /^cmpl-[0-9a-f]{24}$/);
  assert.deepEqual(
    { ...o, id: "x", response: { ...o.response, request_id: "x", body: { ...o.response.body, id: "x" } } },
    {
      id: "x",
      custom_id: "r1",
      response: {
        status_code: 200,
        request_id: "x",
        body: {
          id: "x",
          object: "text_completion",
          created: 1_700_000_000,
          model: "stories260K.bin",
          choices: [{ text: " upon", index: 0, logprobs: null, finish_reason: "length" }],
          usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 },
        },
      },
      error: null,
    },
  );
  // Stable across retries of the same job: the same ids.
  assert.equal(JSON.parse(formatBatchResult("openai", r, ctx)).id, o.id);
  const failed = create(ResultSchema, { id: "r2", finishReason: "error", error: "boom" });
  assert.deepEqual(JSON.parse(formatBatchResult("openai", failed, ctx)).error, {
    code: "generation_failed",
    message: "boom",
  });
});
