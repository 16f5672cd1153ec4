import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { InputFileError, parsePromptsJsonl } from "../src/index.js";

const STORIES = fileURLToPath(new URL("../../../../shared/prompts/stories.jsonl", import.meta.url));

test("valid lines become camelCase specs with their line numbers (BOM, CRLF, blank lines)", () => {
  const text =
    "\uFEFF" +
    [
      '{"id": "a", "prompt": "Once upon a time"}',
      "",
      '{"id": "b", "prompt": "", "max_tokens": 8, "temperature": 0, "top_p": 1, "seed": 0, "kv": "storage"}',
      "   ",
      '{"id": "c", "prompt": "x", "temperature": 0.8, "top_p": 0.9, "seed": 42, "kv": "auto"}',
    ].join("\r\n") +
    "\r\n";
  assert.deepEqual(parsePromptsJsonl("p.jsonl", text), [
    { id: "a", prompt: "Once upon a time", line: 1 },
    { id: "b", prompt: "", line: 3, maxTokens: 8, temperature: 0, topP: 1, seed: 0, kv: "storage" },
    { id: "c", prompt: "x", line: 5, temperature: 0.8, topP: 0.9, seed: 42, kv: "auto" },
  ]);
});

test("every bad line is reported once, by number, with what is wrong", () => {
  const lines = [
    /* 1 */ '{"id": "ok1", "prompt": "fine"}',
    /* 2 */ '{"id": "x", "prompt": "unterminated',
    /* 3 */ '{"prompt": "no id"}',
    /* 4 */ '{"id": "ok1", "prompt": "duplicate"}',
    /* 5 */ "",
    /* 6 */ '{"id": "m", "prompt": "p", "max_tokens": 0}',
    /* 7 */ '{"id": "t", "prompt": "p", "top_p": 0, "temperature": -1}',
    /* 8 */ '{"id": "s", "prompt": "p", "seed": 1.5, "kv": "ram"}',
    /* 9 */ '["not", "an", "object"]',
    /* 10 */ '{"id": "u", "prompt": "p", "max_token": 5}',
    /* 11 */ '{"id": "ok2", "prompt": "fine too"}',
    /* 12 */ '{"id": 12, "prompt": 3}',
  ];
  let error: unknown;
  try {
    parsePromptsJsonl("bad.jsonl", lines.join("\n"));
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof InputFileError);
  assert.equal(error.path, "bad.jsonl");
  assert.deepEqual(
    error.badLines.map((b) => b.line),
    [2, 3, 4, 6, 7, 8, 9, 10, 12],
  );
  const message = (line: number) => error.badLines.find((b) => b.line === line)!.message;
  assert.match(message(2), /^invalid JSON: Unterminated string/);
  assert.equal(message(3), 'missing required field "id"');
  assert.equal(message(4), 'duplicate id "ok1" (first on line 1)');
  assert.equal(message(6), 'field "max_tokens": Too small: expected number to be >0');
  assert.equal(
    message(7),
    'field "temperature": Too small: expected number to be >=0; field "top_p": Too small: expected number to be >0',
  );
  assert.equal(
    message(8),
    'field "seed": Invalid input: expected int, received number; field "kv": Invalid option: expected one of "memory"|"storage"|"auto"',
  );
  assert.equal(message(9), "expected a JSON object");
  assert.equal(message(10), 'unknown field(s) "max_token"');
  assert.equal(
    message(12),
    'field "id": Invalid input: expected string, received number; field "prompt": Invalid input: expected string, received number',
  );
  assert.match(error.message, /^bad\.jsonl: 9 bad line\(s\):\n {2}line 2: invalid JSON/);
});

test("limits: max_tokens above the limit and prompts beyond the count are bad lines", () => {
  const text = [
    '{"id": "a", "prompt": "p", "max_tokens": 600}',
    '{"id": "b", "prompt": "p"}',
    '{"id": "c", "prompt": "p"}',
  ].join("\n");
  assert.throws(
    () => parsePromptsJsonl("l.jsonl", text, { maxTokens: 512, maxPrompts: 2 }),
    (err: unknown) =>
      err instanceof InputFileError &&
      JSON.stringify(err.badLines) ===
        JSON.stringify([
          { line: 1, message: 'field "max_tokens": 600 exceeds the limit 512' },
          { line: 3, message: "more than 2 prompts" },
        ]),
  );
});

test("a file without prompts is an error at line 0", () => {
  assert.throws(
    () => parsePromptsJsonl("empty.jsonl", "\n  \n"),
    (err: unknown) => err instanceof InputFileError && err.badLines.length === 1 && err.badLines[0]!.line === 0,
  );
});

test("the shared stories prompts parse", async () => {
  const prompts = parsePromptsJsonl(STORIES, await readFile(STORIES, "utf8"));
  assert.equal(prompts.length, 16);
  assert.deepEqual(prompts[0], { id: "s01", prompt: "Once upon a time", line: 1 });
});
