/**
 * Issue 13: a prompts or batch file's bytes are checked before anything is
 * sent: a line that is not UTF-8 (once replaced by U+FFFD silently) or over
 * the per-line limit (once a gRPC size error naming no file or line) is
 * refused naming the file, the line and the limit, never echoing the line.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InputFileError, PROMPT_FILE_DEFAULTS, parseBatchInput, parsePromptsJsonl } from "../src/index.js";

const enc = new TextEncoder();
const concat = (...parts: (string | Uint8Array)[]) =>
  Buffer.concat(parts.map((p) => (typeof p === "string" ? enc.encode(p) : p)));

async function withFile<T>(name: string, data: Uint8Array, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-prompt-files-"));
  try {
    const path = join(dir, name);
    await writeFile(path, data);
    return await fn(path);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The bad lines of what `parse` throws, as [line, message]. */
function badLines(parse: () => unknown): [number, string][] {
  try {
    parse();
  } catch (err) {
    assert.ok(err instanceof InputFileError, String(err));
    return err.badLines.map((b) => [b.line, b.message]);
  }
  assert.fail("expected an InputFileError");
}

test("a line that is not UTF-8 is refused naming its line and byte, in both formats, not replaced", async () => {
  const tessera = concat(
    '{"id": "a", "prompt": "fine"}\n',
    '{"id": "b", "prompt": "caf',
    new Uint8Array([0xc3]), // a truncated é
    ' secret"}\r\n',
    '{"id": "c", "prompt": "ok \uFFFD is a real U+FFFD"}\n',
    new Uint8Array([0xff, 0xfe]),
    "\n",
  );
  await withFile("bad-utf8.jsonl", tessera, async (path) => {
    const data = await readFile(path);
    const bad = badLines(() => parsePromptsJsonl(path, data));
    assert.deepEqual(bad, [
      [2, "not valid UTF-8 (byte 27 of the line)"],
      [4, "not valid UTF-8 (byte 1 of the line)"],
    ]);
    assert.throws(
      () => parseBatchInput(path, data),
      (err: Error) => {
        assert.ok(err.message.startsWith(`${path}: 2 bad line(s):\n  line 2: not valid UTF-8`), err.message);
        assert.doesNotMatch(err.message, /secret|caf/);
        return true;
      },
    );
  });
  const head = '{"custom_id": "r1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "';
  const openAi = concat(head, new Uint8Array([0xe2, 0x82]) /* a truncated € */, '"}}\n');
  await withFile("bad-utf8-openai.jsonl", openAi, async (path) => {
    const data = await readFile(path);
    assert.deepEqual(
      badLines(() => parseBatchInput(path, data, "openai")),
      [[1, `not valid UTF-8 (byte ${head.length + 1} of the line)`]],
    );
  });
});

test("a valid file read as bytes parses as its text does (BOM, CRLF, a literal U+FFFD, multi-byte text)", async () => {
  const text =
    "\uFEFF" +
    ['{"id": "a", "prompt": "Once upon a time, café €5 \uD83D\uDE00"}', "", '{"id": "b", "prompt": "\uFFFD"}'].join(
      "\r\n",
    ) +
    "\r\n";
  await withFile("ok.jsonl", enc.encode(text), async (path) => {
    const data = await readFile(path);
    assert.deepEqual(parsePromptsJsonl(path, data), parsePromptsJsonl(path, text));
    assert.deepEqual(parseBatchInput(path, data).prompts, parsePromptsJsonl(path, text));
  });
});

test("a line over the per-line limit is refused naming its line and the limit, before it is parsed", async () => {
  const max = PROMPT_FILE_DEFAULTS.maxLineBytes;
  assert.equal(max, 1024 * 1024);
  const huge = `{"id": "big", "prompt": "${"x".repeat(max)}"}`;
  const data = concat('{"id": "a", "prompt": "fine"}\n', huge, "\n", '{"id": "c", "prompt": "fine"}\n');
  await withFile("huge.jsonl", data, async (path) => {
    const bytes = await readFile(path);
    const want: [number, string][] = [[2, `${huge.length} bytes is over the limit of ${max} bytes per line`]];
    assert.deepEqual(
      badLines(() => parsePromptsJsonl(path, bytes)),
      want,
    );
    assert.deepEqual(
      badLines(() => parseBatchInput(path, bytes)),
      want,
    );
    // The text too, and a smaller limit when the caller sets one.
    assert.deepEqual(
      badLines(() => parsePromptsJsonl(path, bytes.toString("utf8"))),
      want,
    );
    assert.deepEqual(
      badLines(() => parsePromptsJsonl(path, enc.encode('{"id": "a", "prompt": "é"}'), { maxLineBytes: 26 })),
      [[1, "27 bytes is over the limit of 26 bytes per line"]],
    );
    assert.equal(parsePromptsJsonl(path, enc.encode('{"id": "a", "prompt": "é"}'), { maxLineBytes: 27 }).length, 1);
  });
  // A first line over the limit is not decoded to detect the format: it is reported as Tessera's.
  const openAiHuge = concat(
    `{"custom_id": "r1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "${"x".repeat(max)}"}}`,
  );
  assert.deepEqual(
    badLines(() => parseBatchInput("o.jsonl", openAiHuge)).map(([line]) => line),
    [1],
  );
});
