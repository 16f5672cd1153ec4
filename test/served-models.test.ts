/**
 * Issue 13, "a tenant can read the coordinator's files": the coordinator
 * opens only its served models (served-models.ts). A tenant naming any
 * path, relative or absolute, existing or not, gets one answer that tells
 * nothing of the file; a served name gives run.c's reference tokens; a
 * broken served model's error names the model, and its bytes go to the
 * operator's log only; SubmitJob refuses an unserved path before storing;
 * `tessera models` lists the served models (names, and paths for an admin).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { randomBytes } from "node:crypto";
import { jetstreamManager } from "@nats-io/jetstream";
import { JobStore, connectNats, registryBucket } from "@tessera/nats";
import { Code, Coordinator, KvPlacement, RpcError, createClient, type GenerateEvent } from "@tessera/proto";
import { repoRoot } from "@tessera/model";
import { bundled, startInProcessCluster, tempDir } from "@tessera/testing";
import type { CoordinatorOptions } from "@tessera/coordinator";
import { referenceText, runCli } from "./helpers.js";

/** Bearer tokens of tenant acme and of an admin (tenant ops). */
const TENANT = "acme-token-0123456789";
const ADMIN = "ops-token-0123456789";

/** A file only the operator may read: its bytes must never reach a tenant. */
const SECRET = "SECRET-0123456789-do-not-echo";

async function setUp(t: Parameters<typeof startInProcessCluster>[0], more: Partial<CoordinatorOptions> = {}) {
  const dir = await tempDir("tessera-served-");
  t.after(() => dir.remove());
  const secret = join(dir.path, "secret.bin");
  await writeFile(secret, SECRET.repeat(8));
  // A served checkpoint whose header is text, and a Hugging Face folder whose config.json does not parse.
  const broken = join(dir.path, "broken.bin");
  await writeFile(broken, SECRET.repeat(8));
  const hf = join(dir.path, "broken-hf");
  await mkdir(hf);
  await writeFile(join(hf, "config.json"), `{"secret": "${SECRET}", oops`);
  await writeFile(join(hf, "model.safetensors"), SECRET);
  const tokensFile = join(dir.path, "tokens.yaml");
  await writeFile(
    tokensFile,
    `tokens:\n  - { tenant: acme, token: "${TENANT}" }\n  - { tenant: ops, token: "${ADMIN}", admin: true }\n`,
  );
  const log: string[] = [];
  const cluster = await startInProcessCluster(t, {
    coordinator: {
      tokensFile,
      models: [broken, `${hf},tokenizer=${join(hf, "tokenizer.json")}`],
      log: (line) => log.push(line),
      ...more,
    },
  });
  return { cluster, secret, broken, log };
}

/** Generate as `token`; resolves the events, rejects with the RpcError. */
async function generateAs(address: string, token: string, req: Record<string, unknown>): Promise<GenerateEvent[]> {
  const client = createClient(Coordinator, address, {}, token ? { token } : {});
  const events: GenerateEvent[] = [];
  try {
    for await (const ev of client.generate({
      prompts: [{ id: "p", prompt: "" }],
      sampling: { temperature: 0, maxTokens: 256 },
      ...req,
    }) as AsyncIterable<GenerateEvent>)
      events.push(ev);
  } finally {
    client.close();
  }
  return events;
}

const failure = async (p: Promise<unknown>) => {
  const e = await p.then(
    () => assert.fail("the call succeeded"),
    (err: unknown) => RpcError.from(err),
  );
  return { code: e.code, message: e.message };
};

test("a tenant naming a path gets one NOT_FOUND / INVALID_ARGUMENT, whatever the file, and no bytes", async (t) => {
  const { cluster, secret } = await setUp(t);
  const paths = [
    secret, // absolute, exists (not served)
    relative(process.cwd(), secret), // relative, exists
    join(repoRoot, "package.json"), // a JSON file of the operator's
    "package.json",
    "/nonexistent/model.bin", // absolute, missing
    "nope/model.bin", // relative, missing
    "../shared/models/stories260K.bin".replace("stories260K", "missing"),
  ];
  for (const token of [TENANT, ADMIN]) {
    for (const path of paths) {
      const m = await failure(generateAs(cluster.address, token, { modelPath: path }));
      assert.deepEqual(
        { code: m.code, message: m.message.replace(JSON.stringify(path), "<path>") },
        {
          code: Code.NOT_FOUND,
          message: "model_path: no served model is named <path> (ListModels lists the served models)",
        },
        `${path}: ${m.message}`,
      );
      const k = await failure(generateAs(cluster.address, token, { tokenizerPath: path }));
      assert.deepEqual(
        k,
        {
          code: Code.INVALID_ARGUMENT,
          message: 'tokenizer_path: model "stories260K" is served with its own tokenizer; leave tokenizer_path empty',
        },
        path,
      );
      for (const msg of [m.message, k.message]) assert.doesNotMatch(msg, /SECRET|dim|version|bytes|\{/);
    }
  }
});

test("a served model by name, by its served path or by default gives run.c's reference tokens", async (t) => {
  const { cluster } = await setUp(t);
  const expected = await referenceText(join(repoRoot, "../shared/models/README.md"));
  for (const req of [
    {},
    { modelPath: "stories260K" },
    { modelPath: bundled.model, tokenizerPath: bundled.tokenizer },
  ]) {
    const events = await generateAs(cluster.address, TENANT, req);
    const results = events.flatMap((e) => (e.event.case === "result" ? [e.event.value] : []));
    assert.equal(results.length, 1);
    assert.equal(results[0]!.error, "");
    assert.equal(results[0]!.completion, expected, JSON.stringify(req));
  }
});

test("a broken served model's error names the model only; its bytes go to the operator's log", async (t) => {
  const { cluster, broken, log } = await setUp(t);
  for (const [name, path] of [
    ["broken", broken],
    ["broken-hf", "broken-hf"],
  ] as const) {
    for (const token of [TENANT, ADMIN]) {
      assert.deepEqual(await failure(generateAs(cluster.address, token, { modelPath: name })), {
        code: Code.FAILED_PRECONDITION,
        message: `model "${name}" could not be loaded (see the coordinator's log)`,
      });
    }
    assert.ok(
      log.some((l) => l.startsWith(`model "${name}" could not be loaded: `) && l.includes(path)),
      log.join("\n"),
    );
  }
});

test("ListModels names the served models, the default first; paths only to an admin", async (t) => {
  const { cluster, broken } = await setUp(t);
  const list = async (token: string) => {
    const client = createClient(Coordinator, cluster.address, {}, { token });
    try {
      return (await client.listModels({})).models.map((m) => [m.name, m.modelPath, m.tokenizerPath]);
    } finally {
      client.close();
    }
  };
  assert.deepEqual(await list(TENANT), [
    ["stories260K", "", ""],
    ["broken", "", ""],
    ["broken-hf", "", ""],
  ]);
  const admin = await list(ADMIN);
  assert.deepEqual(admin[0], ["stories260K", bundled.model, bundled.tokenizer]);
  assert.deepEqual(admin[1], ["broken", broken, bundled.tokenizer]);
});

test("a tenant's SubmitJob naming an unserved path is NOT_FOUND at submit and stores nothing", async (t) => {
  const servers = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers, name: "served-models-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  const { cluster, secret } = await setUp(t, { nats: servers, natsPrefix: prefix });
  const client = createClient(Coordinator, cluster.address, {}, { token: TENANT });
  t.after(async () => client.close());
  const input = new TextEncoder().encode('{"id":"a","prompt":"Once"}\n');
  for (const modelPath of [secret, "package.json", "/nonexistent/model.bin"]) {
    const e = await failure(client.submitJob({ jobId: "j", input, modelPath }));
    assert.equal(e.code, Code.NOT_FOUND, e.message);
    assert.doesNotMatch(e.message, /SECRET/);
  }
  assert.deepEqual((await client.listJobs({})).jobs, []);
  assert.equal((await client.submitJob({ jobId: "j", input, modelPath: "stories260K" })).modelPath, "stories260K");
});

test("a served model's kv is its prompts' placement when a request leaves kv auto", async (t) => {
  const { coordinator } = await startInProcessCluster(t, {
    storageNodes: 1,
    coordinator: { models: [`on-disk=${bundled.model},kv=storage`] },
  });
  const kvNode = async (req: Record<string, unknown>) => {
    const events = await generateAs(coordinator.address, "", { ...req, sampling: { temperature: 0, maxTokens: 4 } });
    const r = events.flatMap((e) => (e.event.case === "result" ? [e.event.value] : []))[0]!;
    assert.equal(r.error, "");
    return r.kvNode.split("@")[0];
  };
  assert.equal(await kvNode({ modelPath: "on-disk" }), "storage");
  assert.equal(await kvNode({ modelPath: "on-disk", kv: KvPlacement.MEMORY }), "memory");
  assert.equal(await kvNode({ modelPath: "stories260K" }), "memory");
});

test("`tessera models` lists the served models as a table or --json, the default first; paths only for an admin's token", async (t) => {
  const { cluster } = await setUp(t, { models: [`on-disk=${bundled.model},kv=storage`] });
  const cli = (...args: string[]) => runCli(["models", "--cluster", cluster.address, "--plaintext", ...args]);
  const tenant = await cli("--token", TENANT);
  assert.equal(tenant.code, 0, tenant.stderr);
  assert.deepEqual(
    tenant.stdout
      .trimEnd()
      .split("\n")
      .map((l) => l.split(/ +/)),
    [
      ["NAME", "KV", "DEFAULT", "MODEL", "TOKENIZER"],
      ["stories260K", "auto", "yes", "-", "-"],
      ["on-disk", "storage", "-", "-"],
    ],
  );
  const admin = await cli("--token", ADMIN, "--json");
  assert.equal(admin.code, 0, admin.stderr);
  assert.deepEqual(JSON.parse(admin.stdout), [
    { name: "stories260K", default: true, kv: "auto", modelPath: bundled.model, tokenizerPath: bundled.tokenizer },
    { name: "on-disk", default: false, kv: "storage", modelPath: bundled.model, tokenizerPath: bundled.tokenizer },
  ]);
  const bad = await cli("--token", "not-a-token-0123456789");
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, new RegExp(`^tessera: coordinator ${cluster.address}: .+`));
  assert.ok(!bad.stderr.includes("not-a-token"), bad.stderr);
});
