/**
 * `/v1/files` (issue 14) through the official `openai` client, on real
 * NATS (127.0.0.1:4222, a random prefix): bytes round-trip exactly, list /
 * retrieve / content / delete, tenants see only their own files, 401
 * without a token, 413 over maxFileBytes, 400 for a bad purpose, 503 without NATS.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import OpenAI, { APIError, AuthenticationError, BadRequestError, NotFoundError, toFile } from "openai";
import { createCoordinator, createHttpApi, type CoordinatorOptions } from "@tessera/coordinator";
import { tempDir } from "@tessera/testing";
import { connectNats } from "@tessera/nats";
import { jetstreamManager } from "@nats-io/jetstream";

const NATS = process.env["TESSERA_TEST_NATS"] ?? "127.0.0.1:4222";

/** An HTTP API over a coordinator that is never started (the files routes need only NATS). */
async function setUp(t: test.TestContext, o: Partial<CoordinatorOptions>) {
  const tmp = await tempDir("tessera-files-");
  t.after(() => tmp.remove());
  const tokensFile = join(tmp.path, "tokens.yaml");
  await writeFile(
    tokensFile,
    `tokens:\n  - { tenant: acme, token: "tok-acme-0123456789" }\n  - { tenant: other, token: "tok-other-0123456789" }\n`,
  );
  const coordinator = createCoordinator({ tokensFile, log: () => {}, ...o });
  const api = createHttpApi(coordinator, { port: 0 });
  await api.start();
  t.after(() => api.close());
  const client = (apiKey: string) => new OpenAI({ baseURL: `${api.url}/v1`, apiKey, maxRetries: 0 });
  return { api, client };
}

test("files: upload, list, retrieve, content, delete; tenants apart; limits", async (t) => {
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const { api, client } = await setUp(t, { nats: NATS, natsPrefix: prefix, maxFileBytes: 4096 });
  // The test's own files bucket goes with it (the shared NATS keeps no leftovers).
  t.after(async () => {
    const nc = await connectNats({ servers: NATS, name: "http-files-test" });
    await (await jetstreamManager(nc)).streams.delete(`OBJ_${prefix}-files`).catch(() => undefined);
    await nc.close();
  });
  const acme = client("tok-acme-0123456789");
  const other = client("tok-other-0123456789");
  const data = Buffer.concat([Buffer.from('{"custom_id":"a"}\n'), randomBytes(1000)]);
  const f = await acme.files.create({ file: await toFile(data, "x.jsonl"), purpose: "batch" });
  assert.match(f.id, /^file-[0-9a-f]+$/);
  assert.equal(f.object, "file");
  assert.equal(f.bytes, data.length);
  assert.equal(f.filename, "x.jsonl");
  assert.equal(f.purpose, "batch");
  assert.equal(f.status, "processed");
  assert.ok(Math.abs(f.created_at - Date.now() / 1000) < 3600);

  assert.deepEqual(await acme.files.retrieve(f.id), f);
  const content = Buffer.from(await (await acme.files.content(f.id)).arrayBuffer());
  assert.ok(content.equals(data), "bytes round-trip exactly");
  const listed = [];
  for await (const x of acme.files.list()) listed.push(x.id);
  assert.deepEqual(listed, [f.id]);

  // Another tenant: its list is empty, and the id is an unknown one's 404.
  const theirs = [];
  for await (const x of other.files.list()) theirs.push(x.id);
  assert.deepEqual(theirs, []);
  await assert.rejects(other.files.retrieve(f.id), NotFoundError);
  await assert.rejects(other.files.content(f.id), NotFoundError);
  await assert.rejects(other.files.delete(f.id), NotFoundError);
  await assert.rejects(acme.files.retrieve("file-0123456789abcdef01234567"), NotFoundError);

  // No token: 401.
  const res = await fetch(`${api.url}/v1/files`);
  assert.equal(res.status, 401);
  await assert.rejects(client("wrong").files.list(), AuthenticationError);

  // Over maxFileBytes: 413 with OpenAI's error body; a bad purpose: 400 naming it.
  await assert.rejects(
    acme.files.create({ file: await toFile(randomBytes(5000), "big.jsonl"), purpose: "batch" }),
    (e: APIError) => e.status === 413 && (e.error as { param?: string }).param === "file",
  );
  await assert.rejects(
    acme.files.create({ file: await toFile(data, "x.jsonl"), purpose: "fine-tune" }),
    (e: unknown) => e instanceof BadRequestError && e.param === "purpose",
  );

  assert.deepEqual(await acme.files.delete(f.id), { id: f.id, object: "file", deleted: true });
  await assert.rejects(acme.files.retrieve(f.id), NotFoundError);
  const after = [];
  for await (const x of acme.files.list()) after.push(x.id);
  assert.deepEqual(after, []);
});

test("files: without NATS every route is a 503", async (t) => {
  const { client } = await setUp(t, { gpuNodes: ["127.0.0.1:1"], memoryNodes: ["127.0.0.1:2"] });
  const acme = client("tok-acme-0123456789");
  for (const call of [
    () => acme.files.list(),
    () => acme.files.retrieve("file-00"),
    async () => acme.files.create({ file: await toFile(Buffer.from("{}\n"), "x.jsonl"), purpose: "batch" }),
  ]) {
    await assert.rejects(call(), (e: APIError) => e.status === 503 && /--nats/.test(e.message));
  }
});
