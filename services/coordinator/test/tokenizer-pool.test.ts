/**
 * The coordinator's tokeniser pool (tokenize/tokenizer-pool.ts; issue 13):
 * the ids are those of the event loop's encode for both tokenizer formats,
 * tenants are served in turn, a cancelled request's tasks stop (its running
 * task's thread ends), and close() fails what is left. Real worker threads
 * and the bundled tok512.bin (and its tokenizer.json conversion).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import { bundled, llama2cToHfTokenizer, loadModelTokenizer, loadTokenizer } from "@tessera/model";
import { Code, RpcError } from "@tessera/proto";
import { STORY_OPENINGS, storyText, tempDir } from "@tessera/testing";
import { TokenizerPool, taskRanges, type TokenizeCaller } from "../src/tokenize/tokenizer-pool.js";

const VOCAB = 512;
const tok512 = { tokenizerPath: bundled.tokenizer, vocabSize: VOCAB };
/** About `kb` KB of story text. */
const storyOf = (kb: number): string => storyText(kb * 1024);
const caller = (tenant: string | undefined, signal = new AbortController().signal): TokenizeCaller => ({
  tenant,
  signal,
});
const isCode = (code: Code) => (err: unknown) => err instanceof RpcError && err.code === code;

/** Resolves once `cond()` holds, checking every turn of the event loop. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await nextTurn();
}

test("taskRanges cuts consecutive texts by size, a long one alone", () => {
  assert.deepEqual(taskRanges(["aa", "bb", "cc", "dddddd", "e"], 4), [
    [0, 2],
    [2, 3],
    [3, 4],
    [4, 5],
  ]);
  assert.deepEqual(taskRanges([], 4), []);
});

test("the pool's ids are the event loop's encode, for tokenizer.bin and tokenizer.json", async (t) => {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const hf = llama2cToHfTokenizer(await loadTokenizer(bundled.tokenizer, VOCAB));
  const hfPath = join(dir.path, "tokenizer.json");
  await writeFile(hfPath, JSON.stringify(hf.tokenizer));
  await writeFile(join(dir.path, "tokenizer_config.json"), JSON.stringify(hf.config));
  const pool = new TokenizerPool(2);
  t.after(() => pool.close());
  const texts = [...STORY_OPENINGS, "", "héllo wörld 🎉 \u0000 tabs\tand\nlines", storyOf(60)];
  for (const path of [bundled.tokenizer, hfPath]) {
    const local = await loadModelTokenizer(path, VOCAB);
    const got = await pool.encode({ tokenizerPath: path, vocabSize: VOCAB }, texts, caller("a"));
    assert.deepEqual(
      got,
      texts.map((x) => ({ ids: Int32Array.from(local.encode(x, { bos: true, eos: false })) })),
      path,
    );
  }
  assert.deepEqual(pool.stats().threadIds.length, 2);
});

test("a tokenizer the worker cannot load fails the request, naming the file", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  const missing = join(bundled.tokenizer, "..", "no-such-tokenizer.bin");
  await assert.rejects(pool.encode({ tokenizerPath: missing, vocabSize: VOCAB }, ["x"], caller("a")), (err: Error) =>
    err.message.includes("no-such-tokenizer.bin"),
  );
  // The pool goes on.
  assert.equal((await pool.encode(tok512, ["x"], caller("a"))).length, 1);
});

test("another tenant's short prompt waits for the running task only, not for the busy tenant's queue", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  await pool.encode(tok512, ["warm up"], caller("a")); // the thread is up and has the tokenizer
  // Tenant a: 20 prompts of 60 KB, one task each; its first is running.
  const big = pool.encode(
    tok512,
    Array.from({ length: 20 }, () => storyOf(60)),
    caller("a"),
  );
  assert.deepEqual([pool.stats().running, pool.stats().queued], [1, 19]);
  // Tenant b (and an admin's request, queued as tenant ""), after it.
  const short = await pool.encode(tok512, ["Once upon a time"], caller("b"));
  const left = pool.stats().queued;
  assert.equal(short.length, 1);
  // b's task ran right after a's running one: at most one more of a's has started.
  assert.ok(left >= 18, `tenant b's prompt was done when tenant a had ${left} of 20 tasks queued`);
  const admin = await pool.encode(tok512, ["The end."], caller(undefined));
  assert.equal(admin.length, 1);
  assert.ok(pool.stats().queued >= left - 2, "the admin's request was served in turn too");
  assert.equal((await big).length, 20);
  assert.deepEqual({ ...pool.stats(), threadIds: [] }, { queued: 0, running: 0, tenants: 0, threadIds: [] });
});

test("a tenant's requests are served in turn, a short one between a long one's tasks", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  const long = pool.encode(
    tok512,
    Array.from({ length: 10 }, () => storyOf(60)),
    caller("a"),
  );
  const short = await pool.encode(tok512, ["a short one"], caller("a"));
  assert.equal(short.length, 1);
  assert.ok(pool.stats().queued >= 8, `${pool.stats().queued} of the long request's 10 tasks left`);
  await long;
});

test("cancelling a request drops its queued tasks and ends its running task's thread", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  await pool.encode(tok512, ["warm up"], caller("a"));
  const [before] = pool.stats().threadIds;
  const abort = new AbortController();
  // One 4 MB prompt (seconds of encode) then 10 more of 60 KB.
  const texts = [storyOf(4096), ...Array.from({ length: 10 }, () => storyOf(60))];
  const big = pool.encode(tok512, texts, caller("a", abort.signal));
  assert.deepEqual([pool.stats().running, pool.stats().queued], [1, 10]);
  setTimeout(() => abort.abort(), 100);
  await assert.rejects(big, isCode(Code.CANCELLED));
  assert.equal(pool.stats().queued, 0);
  await until(() => pool.stats().running === 0);
  // The thread that ran the 4 MB prompt is gone: piscina terminated it and started another.
  await until(() => pool.stats().threadIds.length === 1);
  assert.ok(!pool.stats().threadIds.includes(before!), `thread ${before} still runs after the cancel`);
  // The pool serves the next request.
  assert.deepEqual(await pool.encode(tok512, [""], caller("b")), [{ ids: Int32Array.of(1) }]);
  // An already cancelled request is refused at once.
  await assert.rejects(pool.encode(tok512, ["x"], caller("a", abort.signal)), isCode(Code.CANCELLED));
});

test("close() fails queued and running tasks and ends the threads; later requests fail UNAVAILABLE", async (t) => {
  const pool = new TokenizerPool(1);
  t.after(() => pool.close());
  const big = pool.encode(tok512, [storyOf(4096), storyOf(60), storyOf(60)], caller("a"));
  const failed = assert.rejects(big, isCode(Code.UNAVAILABLE));
  await until(() => pool.stats().threadIds.length === 1);
  await pool.close();
  await failed;
  assert.deepEqual(pool.stats(), { queued: 0, running: 0, tenants: 0, threadIds: [] });
  await assert.rejects(pool.encode(tok512, ["x"], caller("a")), isCode(Code.UNAVAILABLE));
});
