import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError } from "@tessera/core";
import {
  Code,
  GenerateRequestSchema,
  KvPlacement,
  RpcError,
  create,
  fromBinary,
  toBinary,
  type MessageInitShape,
} from "@tessera/proto";
import {
  checkGenerateLimits,
  compileGenerateLimits,
  defaultGenerateLimits,
  encodedSizeBound,
} from "../src/api/limits.js";

const request = (init: MessageInitShape<typeof GenerateRequestSchema>) => create(GenerateRequestSchema, init);
const prompts = (n: number, over: object = {}) =>
  Array.from({ length: n }, (_, i) => ({ id: `p${i}`, prompt: "Once upon a time", ...over }));

/** Asserts that `f` throws RpcError INVALID_ARGUMENT whose message is exactly `message`. */
function refuses(f: () => void, message: string): void {
  assert.throws(f, (err: unknown) => {
    assert.ok(err instanceof RpcError);
    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.equal(err.message, message);
    return true;
  });
}

test("the defaults are 10,000 prompts, 64 KiB per prompt, 4096 max_tokens and 64 MiB per job", () => {
  assert.deepEqual(defaultGenerateLimits, {
    maxPrompts: 10_000,
    maxPromptBytes: 65_536,
    maxTokens: 4096,
    maxRequestBytes: 67_108_864,
  });
  assert.deepEqual(compileGenerateLimits(), defaultGenerateLimits);
  assert.ok(Object.isFrozen(compileGenerateLimits()));
});

test("each limit is reached exactly, and one over it is refused naming the field and the limit", () => {
  const limits = compileGenerateLimits({ maxPrompts: 3, maxPromptBytes: 8, maxTokens: 16, maxRequestBytes: "1KiB" });
  checkGenerateLimits(
    request({ prompts: prompts(3, { prompt: "12345678", maxTokens: 16 }), sampling: { maxTokens: 16 } }),
    limits,
  );
  refuses(
    () => checkGenerateLimits(request({ prompts: prompts(4, { prompt: "" }) }), limits),
    "prompts: 4 prompts is over the limit of 3 prompts per job",
  );
  refuses(
    () => checkGenerateLimits(request({ prompts: [{ id: "a", prompt: "123456789" }] }), limits),
    'prompts[0] (id "a").prompt: 9 bytes is over the limit of 8 bytes per prompt',
  );
  refuses(
    () =>
      checkGenerateLimits(
        request({
          prompts: [
            { id: "a", prompt: "x" },
            { id: "b", prompt: "y", maxTokens: 17 },
          ],
        }),
        limits,
      ),
    'prompts[1] (id "b").max_tokens: 17 is over the limit of 16 tokens per prompt',
  );
  refuses(
    () => checkGenerateLimits(request({ prompts: prompts(1, { prompt: "" }), sampling: { maxTokens: 17 } }), limits),
    "sampling.max_tokens: 17 is over the limit of 16 tokens per prompt",
  );
});

test("prompt length counts UTF-8 bytes, not characters", () => {
  const limits = compileGenerateLimits({ maxPromptBytes: 4 });
  checkGenerateLimits(request({ prompts: [{ id: "a", prompt: "éé" }] }), limits); // 4 bytes
  refuses(
    () => checkGenerateLimits(request({ prompts: [{ id: "a", prompt: "ééé" }] }), limits),
    'prompts[0] (id "a").prompt: 6 bytes is over the limit of 4 bytes per prompt',
  );
});

test("max_tokens 0 or unset means the coordinator's default and is not checked", () => {
  const limits = compileGenerateLimits({ maxTokens: 1 });
  checkGenerateLimits(request({ prompts: prompts(2), sampling: { maxTokens: 0 } }), limits);
  checkGenerateLimits(request({ prompts: [{ id: "a", prompt: "x", maxTokens: 0 }] }), limits);
});

test("the whole request is measured as protobuf encodes it, or by the size the caller gives", () => {
  const req = request({ prompts: prompts(20), sampling: { temperature: 0.5, maxTokens: 8 }, modelPath: "/m.bin" });
  const size = toBinary(GenerateRequestSchema, req).byteLength;
  checkGenerateLimits(req, compileGenerateLimits({ maxRequestBytes: size }));
  refuses(
    () => checkGenerateLimits(req, compileGenerateLimits({ maxRequestBytes: size - 1 })),
    `request: ${size} bytes is over the limit of ${size - 1} bytes per job`,
  );
  refuses(
    () => checkGenerateLimits(req, compileGenerateLimits({ maxRequestBytes: size }), size + 100),
    `request: ${size + 100} bytes is over the limit of ${size} bytes per job`,
  );
  // Prompt text alone over the limit: refused as soon as it is, without encoding the request.
  refuses(
    () =>
      checkGenerateLimits(
        request({ prompts: prompts(10, { prompt: "x".repeat(100) }) }),
        compileGenerateLimits({ maxRequestBytes: 250 }),
      ),
    "request: at least 306 bytes (its prompts and ids) is over the limit of 250 bytes per job",
  );
});

test("encodedSizeBound is never under the encoded size, even with every field at its longest", () => {
  const max = {
    maxTokens: 2 ** 32 - 1,
    temperature: -1e38,
    topP: 1e38,
    seed: 2n ** 64n - 1n,
    kv: -1 as KvPlacement,
  };
  const req = request({
    jobId: "j".repeat(300),
    modelPath: "/m/é.bin",
    tokenizerPath: "/t.bin",
    priority: "normal",
    kv: -1 as KvPlacement,
    sampling: { temperature: -1e38, topP: 1e38, seed: 2n ** 64n - 1n, maxTokens: 2 ** 32 - 1 },
    prompts: [
      { id: "a".repeat(200), prompt: "é".repeat(70_000), ...max },
      { id: "", prompt: "", ...max },
      { id: "b", prompt: "x" },
    ],
  });
  const text = req.prompts.reduce((n, p) => n + Buffer.byteLength(p.id) + Buffer.byteLength(p.prompt), 0);
  const bound = encodedSizeBound(req, text)!;
  const size = toBinary(GenerateRequestSchema, req).byteLength;
  assert.ok(bound >= size, `bound ${bound} < encoded ${size}`);
  assert.ok(bound - size < 512, `bound ${bound} is far above ${size}`);
  // A request with unknown fields has no bound: it is encoded.
  const unknown = fromBinary(
    GenerateRequestSchema,
    new Uint8Array([...toBinary(GenerateRequestSchema, req), 0xf8, 0x7f, 1]),
  );
  assert.equal(encodedSizeBound(unknown, text), undefined);
});

test("a limit that is not a positive integer or a size fails naming the option", () => {
  for (const [options, option] of [
    [{ maxPrompts: 0 }, "maxPrompts"],
    [{ maxTokens: 1.5 }, "maxTokens"],
    [{ maxPromptBytes: "lots" }, "maxPromptBytes"],
    [{ maxRequestBytes: -1 }, "maxRequestBytes"],
  ] as const) {
    assert.throws(
      () => compileGenerateLimits(options),
      (err: unknown) => err instanceof ConfigError && err.option === option,
    );
  }
});
