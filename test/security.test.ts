/**
 * Issue 5, security: "a connection without a valid certificate or token is
 * refused, tested". Real child processes on mutual TLS with certificates
 * from `tessera certs`, a coordinator with a `--tokens` file made from
 * `tessera token`, and the real NATS server on 127.0.0.1:4222 (a prefix per
 * run, its buckets deleted after):
 * - the whole cluster on mutual TLS still reproduces run.c's reference text
 *   (BOS only, greedy, 256 tokens), with the KV cache on either node;
 * - a memory-node refuses a plaintext client, a client without a
 *   certificate, one with a certificate of another CA, and one that does
 *   not trust its CA (UNAVAILABLE: no handshake), and answers a client with
 *   the CA's certificate;
 * - the coordinator refuses calls without a token or with an unknown one
 *   (UNAUTHENTICATED) and node changes by a tenant (PERMISSION_DENIED);
 * - processes refuse to start without transport security, with plaintext
 *   off loopback, with a certificate of another CA or of another role
 *   (issue 13: each process has its own role's certificate), or with a bad
 *   tokens file;
 * - through the CLI, a tenant neither sees, reads nor cancels another's job.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { JobStore, connectNats, registryBucket } from "@tessera/nats";
import {
  Attention,
  Code,
  Coordinator,
  KvPlacement,
  PLAINTEXT,
  RpcError,
  checkHealth,
  createClient,
  loadTls,
  type ClientAuth,
  type GenerateEvent,
  type TransportSecurity,
} from "@tessera/proto";
import { repoRoot, type LocalCluster } from "@tessera/cli";
import { bundled, tempDir, tesseraJobFile, failure } from "@tessera/testing";
import { startTestCluster, referenceText, runCli, type CliRun } from "./helpers.js";
import { NODE_ROLES, certRoleOf, type Role } from "@tessera/core";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const readme = join(repoRoot, "../shared/models/README.md");
/** The environment without TESSERA_* settings, so that only the flags given secure a process. */
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TESSERA_")));

/**
 * `tessera ...args` without TESSERA_* settings, its stderr without Node's
 * DEP0123 warning (grpc-js sets the TLS server name to an IP address).
 */
async function cli(args: string[], timeoutMs?: number): Promise<CliRun> {
  const run = await runCli(args, { env, ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
  const stderr = run.stderr
    .replace(/^\(node:\d+\) \[DEP0123\] DeprecationWarning: Setting the TLS ServerName to an IP address .*\n/m, "")
    .replace(/^\(Use `node --trace-deprecation \.\.\.` to show where the warning was created\)\n/m, "");
  return { ...run, stderr };
}

/** Work to undo after all tests, last registered first. */
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const undo of cleanups.reverse()) await undo().catch(() => undefined);
});

/** Paths of one `tessera certs --out DIR`. */
interface CertDir {
  ca: string;
  client: string;
  clientKey: string;
  /** `<role>.pem` of a cluster role, e.g. memory-node.pem. */
  cert(role: Role): string;
  /** The --tls-* flags of a process of `role`, with its own role certificate. */
  flags(role: Role): string[];
}

/** Runs `tessera certs --out dir` and names its files. */
async function makeCerts(dir: string): Promise<CertDir> {
  const run = await cli(["certs", "--out", dir, "--quiet"]);
  assert.equal(run.code, 0, run.stderr);
  const f = (name: string) => join(dir, name);
  const cert = (role: Role) => f(`${certRoleOf(role)}.pem`);
  return {
    ca: f("ca.pem"),
    client: f("client.pem"),
    clientKey: f("client-key.pem"),
    cert,
    flags: (role) => ["--tls-ca", f("ca.pem"), "--tls-cert", cert(role), "--tls-key", f(`${certRoleOf(role)}-key.pem`)],
  };
}

/** Runs `tessera token --tenant NAME [--admin]`: the token and its tokens-file entry. */
async function makeToken(tenant: string, admin = false): Promise<{ token: string; entry: string }> {
  const run = await cli(["token", "--tenant", tenant, ...(admin ? ["--admin"] : [])]);
  assert.equal(run.code, 0, run.stderr);
  const token = run.stdout.trim();
  assert.match(token, /^[A-Za-z0-9_-]{43}$/, "32 random bytes, base64url");
  assert.match(run.stderr, new RegExp(`^- \\{ tenant: "${tenant}", sha256: [0-9a-f]{64}, admin: ${admin} \\}\\n$`));
  return { token, entry: run.stderr.trim() };
}

interface Credentials {
  dir: string;
  /** The cluster's CA and certificates. */
  certs: CertDir;
  /** Another CA's, from a second `tessera certs`. */
  other: CertDir;
  tokensFile: string;
  /** Tenants acme and globex, and an admin (tenant ops). */
  tokens: { acme: string; globex: string; admin: string };
}

let credentials: Promise<Credentials> | undefined;
/** Certificates, tokens and the tokens file, made once for all tests. */
function sharedCredentials(): Promise<Credentials> {
  return (credentials ??= (async () => {
    const tmp = await tempDir("tessera-security-");
    cleanups.push(() => tmp.remove());
    const [certs, other] = await Promise.all([makeCerts(join(tmp.path, "certs")), makeCerts(join(tmp.path, "other"))]);
    const [acme, globex, admin] = await Promise.all([makeToken("acme"), makeToken("globex"), makeToken("ops", true)]);
    const tokensFile = join(tmp.path, "tokens.yaml");
    // The file holds only the tokens' SHA-256, as `tessera token` prints them.
    await writeFile(tokensFile, `tokens:\n${[acme, globex, admin].map((t) => `  ${t.entry}\n`).join("")}`);
    return {
      dir: tmp.path,
      certs,
      other,
      tokensFile,
      tokens: { acme: acme.token, globex: globex.token, admin: admin.token },
    };
  })());
}

interface TlsCluster extends Credentials {
  cluster: LocalCluster;
}

let tlsCluster: Promise<TlsCluster> | undefined;
/**
 * One cluster for the tests that need one: every process on mutual TLS
 * with its own role's certificate (gpu-node.pem, ...), nodes registered in NATS under a fresh prefix, the
 * coordinator with the tokens file. The prefix's job and registry buckets
 * are deleted once the cluster has stopped.
 */
function sharedCluster(): Promise<TlsCluster> {
  return (tlsCluster ??= (async () => {
    const creds = await sharedCredentials();
    const prefix = `t${randomBytes(4).toString("hex")}`;
    const nc = await connectNats({ servers: SERVERS, name: "security-test" });
    const store = await JobStore.open(nc, { prefix });
    cleanups.push(async () => {
      await store.destroy();
      const jsm = await jetstreamManager(nc);
      await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
      await nc.close();
    });
    const cluster = await startTestCluster({
      transport: [],
      flags: {
        coordinator: [...creds.certs.flags("coordinator"), "--tokens", creds.tokensFile],
        gpu: creds.certs.flags("gpu"),
        memory: creds.certs.flags("memory"),
        storage: creds.certs.flags("storage"),
      },
      nats: { servers: SERVERS, prefix },
    });
    cleanups.push(() => cluster.stop());
    return { ...creds, cluster };
  })());
}

/** Everything a server stream sends until it ends. */
async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const m of stream) out.push(m);
  return out;
}

/** A TLS identity from files without loadTls' checks (a certificate of another CA than the trusted one). */
async function tlsOf(ca: string, cert: string, key: string): Promise<TransportSecurity> {
  return { kind: "tls", ca: await readFile(ca), cert: await readFile(cert), key: await readFile(key), source: cert };
}

test("a cluster on mutual TLS with bearer tokens reproduces run.c's reference text with the KV cache on either node", async () => {
  const { cluster, certs, tokens } = await sharedCluster();
  const expected = await referenceText(readme);
  // A tenant's client: trusts the CA, presents no certificate, sends its token.
  const client = createClient(
    Coordinator,
    cluster.address,
    {},
    { security: loadTls({ ca: certs.ca }), token: tokens.acme },
  );
  try {
    const events = await collect<GenerateEvent>(
      client.generate({
        prompts: [
          { id: "mem", prompt: "", kv: KvPlacement.MEMORY },
          { id: "sto", prompt: "", kv: KvPlacement.STORAGE },
        ],
        // BOS only, greedy, 256 tokens: run.c's reference.
        sampling: { temperature: 0, maxTokens: 256 },
      }),
    );
    const results = new Map(
      events.flatMap((e) => (e.event.case === "result" ? [[e.event.value.id, e.event.value]] : [])),
    );
    assert.deepEqual([...results.keys()].sort(), ["mem", "sto"]);
    for (const [id, role] of [
      ["mem", "memory"],
      ["sto", "storage"],
    ] as const) {
      const r = results.get(id)!;
      assert.equal(r.error, "", `${id}: ${r.error}`);
      assert.equal(r.kvNode, `${role}@${cluster.node(role).address}`);
      assert.equal(r.finishReason, "length");
      assert.equal(r.completion, expected, `${id}: the reference text`);
    }
    assert.deepEqual(results.get("mem")!.completionTokenIds, results.get("sto")!.completionTokenIds);
  } finally {
    client.close();
  }
});

test("a TLS memory-node refuses clients without a certificate its CA signed or that do not trust its CA; its CA's client certificate works", async () => {
  const { cluster, certs, other } = await sharedCluster();
  const address = cluster.node("memory").address;
  const info = (security: TransportSecurity) => {
    const client = createClient(Attention, address, {}, { security });
    return client.info({}, { deadline: 15_000 }).finally(() => client.close());
  };
  const refused: [string, TransportSecurity][] = [
    ["a plaintext client", PLAINTEXT],
    ["a TLS client without a certificate", loadTls({ ca: certs.ca })],
    ["a client certificate of another CA", await tlsOf(certs.ca, other.client, other.clientKey)],
    ["a client that trusts another CA", await tlsOf(other.ca, certs.client, certs.clientKey)],
  ];
  for (const [who, security] of refused) {
    const f = await failure(info(security));
    assert.equal(f.code, Code.UNAVAILABLE, `${who}: ${RpcError.codeName(f.code)}: ${f.message}`);
  }
  const valid = loadTls({ ca: certs.ca, cert: certs.client, key: certs.clientKey });
  const answer = await info(valid);
  assert.equal(answer.role, "memory");
  assert.equal(await checkHealth(address, "tessera.v1.Attention", 5000, PLAINTEXT), "UNREACHABLE");
  assert.equal(await checkHealth(address, "tessera.v1.Attention", 5000, valid), "SERVING");
});

test("a coordinator with --tokens refuses calls without a known token (UNAUTHENTICATED) and node changes by a tenant (PERMISSION_DENIED)", async () => {
  const { cluster, certs, tokens } = await sharedCluster();
  const ca = loadTls({ ca: certs.ca });
  const clientOf = (auth: ClientAuth) => {
    const c = createClient(Coordinator, cluster.address, {}, auth);
    clients.push(c);
    return c;
  };
  const clients: { close(): void }[] = [];
  try {
    const plaintext = await failure(clientOf({ security: PLAINTEXT }).listNodes({}, { deadline: 15_000 }));
    assert.equal(plaintext.code, Code.UNAVAILABLE, plaintext.message);

    const anonymous = clientOf({ security: ca });
    for (const call of [
      () => anonymous.listNodes({}),
      () => anonymous.listJobs({}),
      () => collect(anonymous.generate({ prompts: [{ id: "x", prompt: "" }], sampling: { maxTokens: 1 } })),
    ]) {
      const f = await failure(call());
      assert.equal(f.code, Code.UNAUTHENTICATED, f.message);
      assert.match(f.message, /^no bearer token: this coordinator needs `authorization: Bearer <token>`/);
    }
    const wrong = await failure(clientOf({ security: ca, token: `${tokens.acme}x` }).listNodes({}));
    assert.equal(wrong.code, Code.UNAUTHENTICATED, wrong.message);
    assert.equal(wrong.message, "unknown bearer token");

    const memory = cluster.node("memory").address;
    const tenant = clientOf({ security: ca, token: tokens.acme });
    const add = await failure(tenant.addNode({ role: "memory", address: memory }));
    assert.equal(add.code, Code.PERMISSION_DENIED, add.message);
    assert.equal(add.message, "AddNode: tenant acme may not; it needs an admin token");
    const remove = await failure(tenant.removeNode({ address: memory }));
    assert.equal(remove.code, Code.PERMISSION_DENIED, remove.message);
    assert.equal(remove.message, "RemoveNode: tenant acme may not; it needs an admin token");

    // The admin sees every node, still there, each answering its health check over mutual TLS.
    const { nodes } = await clientOf({ security: ca, token: tokens.admin }).listNodes({});
    assert.deepEqual(
      nodes.map((n) => ({ role: n.role, address: n.address, health: n.health })),
      NODE_ROLES.map((role) => ({
        role,
        address: cluster.node(role).address,
        health: "SERVING",
      })),
    );
  } finally {
    for (const c of clients) c.close();
  }
});

test("a node refuses to start without transport security, with plaintext off loopback, or with a certificate of another CA or another role", async () => {
  const { certs, other } = await sharedCredentials();
  const memory = (...flags: string[]) => cli(["node", "memory", "--port", "0", "--profile", "off", ...flags], 30_000);

  const none = await memory();
  assert.equal(none.code, 1, none.stderr);
  assert.match(
    none.stderr,
    /^tessera: the memory-node: no transport security: give --tls-ca, --tls-cert and --tls-key .*, or --plaintext \(loopback addresses only\)\n$/,
  );

  const open = await memory("--plaintext", "--host", "0.0.0.0");
  assert.equal(open.code, 1, open.stderr);
  assert.match(open.stderr, /plaintext gRPC on 0\.0\.0\.0 refused: plaintext is allowed on loopback only/);

  const mixed = await memory("--tls-ca", certs.ca, ...other.flags("memory").slice(2));
  assert.equal(mixed.code, 1, mixed.stderr);
  assert.ok(
    mixed.stderr.includes(
      `TLS certificate ${other.cert("memory")} (CN=tessera-memory-node) was not issued by the CA in ${certs.ca}`,
    ),
    mixed.stderr,
  );

  // Issue 13: a node's certificate must carry its own role (the nodes it calls check it on every RPC).
  const wrongRole = await memory(...certs.flags("gpu"));
  assert.equal(wrongRole.code, 1, wrongRole.stderr);
  assert.equal(
    wrongRole.stderr,
    `tessera: the memory-node: TLS certificate ${certs.cert("gpu")} has role gpu-node, not memory-node ` +
      "(SAN URI spiffe://tessera/role/memory-node; `tessera certs` writes memory-node.pem)\n",
  );
  const operator = await memory("--tls-ca", certs.ca, "--tls-cert", certs.client, "--tls-key", certs.clientKey);
  assert.equal(operator.code, 1, operator.stderr);
  assert.match(operator.stderr, /TLS certificate .*client\.pem has role operator, not memory-node/);
});

test("a coordinator refuses to start with a tokens file holding a bad entry, naming the file and the entry", async () => {
  const { dir, certs } = await sharedCredentials();
  const badTokens = join(dir, "bad-tokens.yaml");
  await writeFile(
    badTokens,
    'tokens:\n  - { tenant: acme, token: "0123456789abcdef0123" }\n  - { tenant: "no spaces", token: "fedcba9876543210fedc" }\n',
  );
  const coordinator = await cli(
    [
      "coordinator",
      "--port",
      "0",
      ...certs.flags("coordinator"),
      "--tokens",
      badTokens,
      "--gpu-node",
      "127.0.0.1:1",
      "--memory-node",
      "127.0.0.1:1",
      "--model",
      bundled.model,
      "--tokenizer",
      bundled.tokenizer,
    ],
    // Should exit at once; a coordinator that ignores the file serves until killed.
    30_000,
  );
  assert.equal(coordinator.code, 1, coordinator.stderr);
  assert.ok(
    coordinator.stderr.includes(`${badTokens}: tokens.1.tenant: letters, digits, '_', '.' or '-', 1 to 64 of them`),
    coordinator.stderr,
  );
});

test("through the CLI a tenant neither lists, reads nor cancels another tenant's job; its owner does", async () => {
  const { cluster, dir, certs, tokens } = await sharedCluster();
  const file = join(dir, "two-prompts.jsonl");
  await writeFile(file, tesseraJobFile(2));
  const as = (token: string, ...args: string[]) =>
    cli([...args, "--cluster", cluster.address, "--tls-ca", certs.ca, "--token", token]);

  const submit = await as(tokens.acme, "submit", file, "--max-tokens", "4");
  assert.equal(submit.code, 0, submit.stderr);
  const id = submit.stdout.trim();
  assert.match(id, /^[A-Za-z0-9_-]+$/);
  // The status may already have moved on from "queued": a coordinator pulls it at once.
  assert.match(
    submit.stderr,
    new RegExp(`^job ${id}: \\w+, \\d/2 prompts, \\d+ tokens \\(tessera format, normal priority\\)\\n$`),
  );

  const othersList = await as(tokens.globex, "jobs", "--json");
  assert.equal(othersList.code, 0, othersList.stderr);
  assert.equal(othersList.stdout, "", "globex has no jobs");
  const ownList = await as(tokens.acme, "jobs", "--json");
  assert.equal(ownList.code, 0, ownList.stderr);
  assert.deepEqual(
    ownList.stdout
      .trim()
      .split("\n")
      .map((l) => {
        const j = JSON.parse(l) as { id: string; tenant: string };
        return { id: j.id, tenant: j.tenant };
      }),
    [{ id, tenant: "acme" }],
  );

  const othersStatus = await as(tokens.globex, "status", id);
  assert.equal(othersStatus.code, 1, othersStatus.stderr);
  assert.equal(othersStatus.stdout, "");
  assert.equal(othersStatus.stderr, `tessera: job "${id}" not found\n`);

  const othersCancel = await as(tokens.globex, "cancel", id);
  assert.equal(othersCancel.code, 1, othersCancel.stderr);
  assert.equal(othersCancel.stderr, `tessera: coordinator ${cluster.address}: NOT_FOUND: job "${id}" not found\n`);

  // The owner watches it to the end: it ran, and globex's cancel did nothing.
  const watch = await as(tokens.acme, "watch", id);
  assert.equal(watch.code, 0, watch.stdout + watch.stderr);
  const status = await as(tokens.acme, "status", id, "--json");
  assert.equal(status.code, 0, status.stderr);
  const job = JSON.parse(status.stdout) as {
    id: string;
    tenant: string;
    status: string;
    promptsDone: number;
    cancelRequested: boolean;
  };
  assert.deepEqual(
    {
      id: job.id,
      tenant: job.tenant,
      status: job.status,
      promptsDone: job.promptsDone,
      cancelRequested: job.cancelRequested,
    },
    { id, tenant: "acme", status: "completed", promptsDone: 2, cancelRequested: false },
  );
});
