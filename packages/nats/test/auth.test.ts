/**
 * NATS user credentials (issue 5) against private nats-servers started here
 * from generated config files (JetStream on, in a temp dir): one with
 * `authorization { users = [user/password, nkey] }`, one with a token, one
 * with TLS and client certificates (made with openssl). Proves that without
 * (or with wrong) credentials connectNats rejects with an authorization
 * message naming the flags; that the process-wide credentials set once
 * with setNatsAuth reach connectNats and call sites that do not pass them
 * (registerNode); that seed files are read at each connect; that `extra`
 * wins; and that natsAuthFromFlags/natsTlsFromFlags reject bad flags
 * naming the flag.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { nkeys } from "@nats-io/transport-node";
import { ConfigError } from "@tessera/core";
import {
  NatsAuthError,
  NatsError,
  connectNats,
  natsAuth,
  natsAuthFromFlags,
  natsTls,
  natsServerCredentials,
  natsTlsFromFlags,
  redactNatsServers,
  registerNode,
  registryBucket,
  setNatsAuth,
  setNatsTls,
  type NodeRecord,
} from "@tessera/nats";
import { freePort } from "@tessera/testing";

const FLAGS = "--nats-user/--nats-password/--nats-token/--nats-nkey/--nats-creds";

/** Resolves once something on 127.0.0.1:port sends a NATS INFO line. */
async function waitForInfo(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect(port, "127.0.0.1");
    s.once("data", (d) => {
      s.destroy();
      resolve(d.toString().startsWith("INFO "));
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * Starts a private nats-server on a free loopback port from a generated
 * config file: JetStream in a temp dir, plus `config` (authorization, tls).
 * Stops it and removes the dir after the test.
 * @returns the servers string and the temp dir.
 */
async function startServer(t: TestContext, config: (dir: string) => string): Promise<{ servers: string; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-nats-auth-"));
  const port = await freePort();
  const conf = join(dir, "server.conf");
  await writeFile(
    conf,
    `listen: "127.0.0.1:${port}"\njetstream { store_dir: ${JSON.stringify(join(dir, "js"))} }\n${config(dir)}\n`,
  );
  const p = spawn("/usr/sbin/nats-server", ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  t.after(async () => {
    if (p.exitCode === null) {
      p.kill("SIGTERM");
      await new Promise((r) => p.once("exit", r));
    }
    await rm(dir, { recursive: true, force: true });
  });
  for (let i = 0; i < 200; i++) {
    if (await waitForInfo(port)) return { servers: `127.0.0.1:${port}`, dir };
    if (p.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nats-server did not start on 127.0.0.1:${port} (config ${conf}): ${stderr}`);
}

/** Resets the process-wide auth and TLS after the test. */
function resetAfter(t: TestContext): void {
  t.after(() => {
    setNatsAuth({ kind: "none" });
    setNatsTls(undefined);
  });
}

/** The user/password + nkey server, and the nkey user's seed in a file. */
async function userServer(t: TestContext) {
  const kp = nkeys.createUser();
  const { servers, dir } = await startServer(
    t,
    () => `authorization { users = [ {user: tessera, password: s3cret}, {nkey: ${kp.getPublicKey()}} ] }`,
  );
  const seedFile = join(dir, "user.nk");
  await writeFile(seedFile, new TextDecoder().decode(kp.getSeed()) + "\n", { mode: 0o600 });
  return { servers, dir, seedFile, publicKey: kp.getPublicKey() };
}

/** Asserts that `p` rejects with a NatsAuthError for `servers` whose message is exactly `message`. */
async function rejectsAuth(p: Promise<unknown>, servers: string, message: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof NatsAuthError, `a NatsAuthError, got ${String(e)}`);
    assert.ok(e instanceof NatsError);
    assert.equal(e.servers, servers);
    assert.equal(e.rpcCode, 16);
    assert.equal(e.message, message);
    return true;
  });
}

test("no credentials, or a wrong password: connectNats rejects with an authorization violation naming the flags", async (t) => {
  resetAfter(t);
  const { servers } = await userServer(t);
  assert.deepEqual(natsAuth(), { kind: "none" });
  await rejectsAuth(
    connectNats({ servers, name: "no-creds", timeoutMs: 3000 }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as no-creds with no credentials): Authorization Violation`,
  );
  setNatsAuth({ kind: "user", user: "tessera", password: "wrong" });
  await rejectsAuth(
    connectNats({ servers, name: "wrong-pw", timeoutMs: 3000 }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as wrong-pw with user "tessera"): Authorization Violation`,
  );
});

test("user/password set once with setNatsAuth: connectNats and registerNode connect, and a JetStream KV put/get works", async (t) => {
  resetAfter(t);
  const { servers } = await userServer(t);
  setNatsAuth({ kind: "user", user: "tessera", password: "s3cret" });
  assert.deepEqual(natsAuth(), { kind: "user", user: "tessera", password: "s3cret" });
  const nc = await connectNats({ servers, name: "user-pw" });
  t.after(() => nc.close());
  const kv = await new Kvm(nc).create("auth-test");
  await kv.put("greeting", "hello");
  assert.equal((await kv.get("greeting"))!.string(), "hello");

  // registerNode takes only the servers string: the credentials come from setNatsAuth.
  const reg = await registerNode({
    nats: servers,
    role: "memory",
    address: "127.0.0.1:50099",
    heartbeatMs: 100,
    log: () => {},
  });
  t.after(() => reg.deregister().catch(() => undefined));
  const registry = await new Kvm(nc).open(registryBucket());
  const record = (await registry.get(reg.key))!.json<NodeRecord>();
  assert.equal(record.address, "127.0.0.1:50099");
  assert.equal(record.role, "memory");
  await reg.deregister();
  assert.equal(await registry.get(reg.key).then((e) => e?.operation), "DEL");
});

test("nkey seed file: connects; the file is read at each connect, so a replaced seed takes effect on the next one", async (t) => {
  resetAfter(t);
  const { servers, seedFile, publicKey } = await userServer(t);
  assert.deepEqual(natsAuthFromFlags({ natsNkey: seedFile }), { kind: "nkey", seedFile });
  setNatsAuth(natsAuthFromFlags({ natsNkey: seedFile }));
  const nc = await connectNats({ servers, name: "nkey-user" });
  const kv = await new Kvm(nc).create("nkey-test");
  await kv.put("k", "v");
  assert.equal((await kv.get("k"))!.string(), "v");
  await nc.close();

  // Another (valid, unknown to the server) user seed in the same file is refused.
  const good = await readFile(seedFile, "utf8");
  const stranger = nkeys.createUser();
  assert.notEqual(stranger.getPublicKey(), publicKey);
  await writeFile(seedFile, new TextDecoder().decode(stranger.getSeed()));
  await rejectsAuth(
    connectNats({ servers, name: "nkey-stranger", timeoutMs: 3000 }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as nkey-stranger with the NKEY seed in ${seedFile}): Authorization Violation`,
  );
  await writeFile(seedFile, good);
  const again = await connectNats({ servers, name: "nkey-user-again" });
  await again.close();

  // A missing seed file is an error naming the file, not an authorization violation.
  await rm(seedFile);
  await assert.rejects(connectNats({ servers, name: "nkey-missing" }), (e: unknown) => {
    assert.ok(e instanceof NatsError && !(e instanceof NatsAuthError), String(e));
    assert.match(e.message, new RegExp(`^NATS at ${servers}: --nats-nkey: cannot read ${seedFile}: ENOENT`));
    return true;
  });
});

test("credentials in extra win over the process-wide ones", async (t) => {
  resetAfter(t);
  const { servers } = await userServer(t);
  setNatsAuth({ kind: "user", user: "tessera", password: "wrong" });
  const nc = await connectNats({ servers, name: "extra-wins", extra: { user: "tessera", pass: "s3cret" } });
  assert.equal(nc.isClosed(), false);
  await nc.close();
  await rejectsAuth(
    connectNats({ servers, name: "extra-wrong", timeoutMs: 3000, extra: { user: "tessera", pass: "nope" } }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as extra-wrong with the credentials given in extra): Authorization Violation`,
  );
});

test("token auth against a server configured with authorization { token }", async (t) => {
  resetAfter(t);
  const { servers } = await startServer(t, () => `authorization { token: "t0ken-abc" }`);
  await rejectsAuth(
    connectNats({ servers, name: "token-none", timeoutMs: 3000 }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as token-none with no credentials): Authorization Violation`,
  );
  setNatsAuth(natsAuthFromFlags({ natsToken: "wrong" }));
  await rejectsAuth(
    connectNats({ servers, name: "token-wrong", timeoutMs: 3000 }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as token-wrong with a token): Authorization Violation`,
  );
  setNatsAuth(natsAuthFromFlags({ natsToken: "t0ken-abc" }));
  const nc = await connectNats({ servers, name: "token-right" });
  t.after(() => nc.close());
  const kv = await new Kvm(nc).create("token-test");
  await kv.put("k", "42");
  assert.equal((await kv.get("k"))!.string(), "42");
});

/** Asserts that `f` throws a ConfigError whose option is `option` and whose message is `message`. */
function throwsConfig(f: () => unknown, option: string, message: string | RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.equal(e.option, option);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

test("natsAuthFromFlags: the kinds, and errors naming the flag", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "tessera-nats-flags-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  assert.deepEqual(natsAuthFromFlags({}), { kind: "none" });
  assert.deepEqual(natsAuthFromFlags({ natsUser: "u", natsPassword: "p" }), { kind: "user", user: "u", password: "p" });
  assert.deepEqual(natsAuthFromFlags({ natsToken: "tok" }), { kind: "token", token: "tok" });

  throwsConfig(() => natsAuthFromFlags({ natsUser: "u" }), "--nats-user", "--nats-user: needs --nats-password");
  throwsConfig(() => natsAuthFromFlags({ natsPassword: "p" }), "--nats-password", "--nats-password: needs --nats-user");
  throwsConfig(() => natsAuthFromFlags({ natsUser: "", natsPassword: "p" }), "--nats-user", "--nats-user: is empty");
  throwsConfig(
    () => natsAuthFromFlags({ natsToken: "tok", natsNkey: "/x" }),
    "--nats-nkey",
    "--nats-nkey: cannot be combined with --nats-token (give one kind of NATS credentials)",
  );
  throwsConfig(
    () => natsAuthFromFlags({ natsUser: "u", natsPassword: "p", natsCreds: "/x" }),
    "--nats-creds",
    "--nats-creds: cannot be combined with --nats-user (give one kind of NATS credentials)",
  );
  const missing = join(dir, "missing.nk");
  throwsConfig(
    () => natsAuthFromFlags({ natsNkey: missing }),
    "--nats-nkey",
    new RegExp(`^--nats-nkey: cannot read ${missing}: ENOENT`),
  );
  const notSeed = join(dir, "account.nk");
  await writeFile(notSeed, new TextDecoder().decode(nkeys.createAccount().getSeed()));
  throwsConfig(
    () => natsAuthFromFlags({ natsNkey: notSeed }),
    "--nats-nkey",
    `--nats-nkey: ${notSeed} does not hold an NKEY user seed (a line starting "SU")`,
  );
  const notCreds = join(dir, "user.creds");
  await writeFile(notCreds, "just text\n");
  throwsConfig(
    () => natsAuthFromFlags({ natsCreds: notCreds }),
    "--nats-creds",
    `--nats-creds: ${notCreds} is not a NATS .creds file (needs a NATS USER JWT and a USER NKEY SEED block)`,
  );
  throwsConfig(
    () => setNatsAuth({ kind: "token", token: "" }),
    "--nats-token",
    "--nats-token: must be a non-empty string",
  );
});

test("natsTlsFromFlags/setNatsTls: flags that need each other, and a missing CA file named at connect", async (t) => {
  resetAfter(t);
  const dir = await mkdtemp(join(tmpdir(), "tessera-nats-tlsflags-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  assert.equal(natsTlsFromFlags({}), undefined);
  throwsConfig(() => natsTlsFromFlags({ natsCert: "/c" }), "--nats-cert", "--nats-cert: needs --nats-ca");
  const ca = join(dir, "ca.pem");
  await writeFile(ca, "not checked here\n");
  throwsConfig(
    () => natsTlsFromFlags({ natsCa: ca, natsCert: ca }),
    "--nats-cert",
    "--nats-cert: needs --nats-key (the client certificate's private key)",
  );
  assert.deepEqual(natsTlsFromFlags({ natsCa: ca }), { caFile: ca });
  const missing = join(dir, "missing-ca.pem");
  throwsConfig(
    () => natsTlsFromFlags({ natsCa: missing }),
    "--nats-ca",
    new RegExp(`^--nats-ca: cannot read ${missing}: ENOENT`),
  );
  setNatsTls({ caFile: missing });
  assert.deepEqual(natsTls(), { caFile: missing });
  await assert.rejects(
    connectNats({ servers: "127.0.0.1:4222", name: "tls-missing-ca" }),
    new RegExp(`^NatsError: NATS at 127\\.0\\.0\\.1:4222: --nats-ca: cannot read ${missing}: ENOENT`),
  );
});

/** Runs openssl with `args` in `dir`; throws with its stderr on failure. */
function openssl(dir: string, ...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

test("TLS with a client certificate (mTLS): setNatsTls makes every connectNats use it", async (t) => {
  resetAfter(t);
  const { servers, dir } = await startServer(t, (dir) => {
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
      dir,
      "req",
      "-x509",
      ...ec,
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "1",
      "-subj",
      "/CN=tessera-test-ca",
    );
    for (const [name, ext] of [
      ["server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"],
      ["client", "extendedKeyUsage=clientAuth\n"],
    ] as const) {
      openssl(dir, "req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=tessera-${name}`);
      writeFileSync(join(dir, `${name}.ext`), ext);
      openssl(
        dir,
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        `${name}.pem`,
        "-days",
        "1",
        "-extfile",
        `${name}.ext`,
      );
    }
    const f = (n: string) => JSON.stringify(join(dir, n));
    return `tls { cert_file: ${f("server.pem")}, key_file: ${f("server.key")}, ca_file: ${f("ca.pem")}, verify: true, timeout: 2 }`;
  });
  const caFile = join(dir, "ca.pem");
  const certFile = join(dir, "client.pem");
  const keyFile = join(dir, "client.key");

  // Trusting the CA but presenting no client certificate: the server refuses the handshake.
  setNatsTls(natsTlsFromFlags({ natsCa: caFile }));
  await assert.rejects(connectNats({ servers, name: "tls-no-client-cert", timeoutMs: 3000 }), (e: unknown) => {
    assert.ok(e instanceof NatsError && !(e instanceof NatsAuthError), String(e));
    assert.match(e.message, new RegExp(`^NATS at ${servers}: cannot connect \\(as tls-no-client-cert\\)`));
    return true;
  });

  setNatsTls(natsTlsFromFlags({ natsCa: caFile, natsCert: certFile, natsKey: keyFile }));
  assert.deepEqual(natsTls(), { caFile, certFile, keyFile });
  const nc = await connectNats({ servers, name: "tls-mtls" });
  t.after(() => nc.close());
  assert.equal(nc.info?.tls_required, true);
  const kv = await new Kvm(nc).create("tls-test");
  await kv.put("k", "over tls");
  assert.equal((await kv.get("k"))!.string(), "over tls");
});

/** A NATS JWT (ed25519-nkey) of `claims`, issued by `issuer` for `subject`. */
function natsJwt(
  issuer: ReturnType<typeof nkeys.createOperator>,
  subject: string,
  nats: Record<string, unknown>,
): string {
  const b64 = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
  const header = b64(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }));
  const claims = {
    jti: randomUUID().replace(/-/g, "").toUpperCase(),
    iat: Math.floor(Date.now() / 1000),
    iss: issuer.getPublicKey(),
    name: subject.slice(0, 8),
    sub: subject,
    nats: { ...nats, version: 2 },
  };
  const body = b64(JSON.stringify(claims));
  return `${header}.${body}.${b64(issuer.sign(new TextEncoder().encode(`${header}.${body}`)))}`;
}

test("creds file (decentralised auth: operator, account and user JWTs): connects; another account's user is refused", async (t) => {
  resetAfter(t);
  const operator = nkeys.createOperator();
  const account = nkeys.createAccount();
  const system = nkeys.createAccount();
  const limits = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };
  // JetStream limits enable JetStream for the account.
  const jsLimits = { ...limits, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 };
  const accountJwt = (a: typeof account, l: object) =>
    natsJwt(operator, a.getPublicKey(), { type: "account", limits: l });
  const { servers, dir } = await startServer(
    t,
    () =>
      `operator: ${natsJwt(operator, operator.getPublicKey(), { type: "operator" })}\n` +
      `system_account: ${system.getPublicKey()}\nresolver: MEMORY\n` +
      `resolver_preload: { ${account.getPublicKey()}: ${accountJwt(account, jsLimits)}, ${system.getPublicKey()}: ${accountJwt(system, limits)} }`,
  );
  const credsFor = async (issuer: typeof account, file: string) => {
    const user = nkeys.createUser();
    const jwt = natsJwt(issuer, user.getPublicKey(), {
      type: "user",
      pub: {},
      sub: {},
      subs: -1,
      data: -1,
      payload: -1,
    });
    await writeFile(
      join(dir, file),
      `-----BEGIN NATS USER JWT-----\n${jwt}\n------END NATS USER JWT------\n\n` +
        `-----BEGIN USER NKEY SEED-----\n${new TextDecoder().decode(user.getSeed())}\n------END USER NKEY SEED------\n`,
    );
    return join(dir, file);
  };
  const good = await credsFor(account, "good.creds");
  setNatsAuth(natsAuthFromFlags({ natsCreds: good }));
  assert.deepEqual(natsAuth(), { kind: "creds", credsFile: good });
  const nc = await connectNats({ servers, name: "creds-user" });
  t.after(() => nc.close());
  const kv = await new Kvm(nc).create("creds-test");
  await kv.put("k", "decentralised");
  assert.equal((await kv.get("k"))!.string(), "decentralised");

  const stranger = await credsFor(nkeys.createAccount(), "stranger.creds");
  setNatsAuth(natsAuthFromFlags({ natsCreds: stranger }));
  await rejectsAuth(
    connectNats({ servers, name: "creds-stranger", timeoutMs: 3000 }),
    servers,
    `NATS at ${servers}: authorization violation: check ${FLAGS} (connecting as creds-stranger with the creds file ${stranger}): Authorization Violation`,
  );
});

test("credentials in the server URL (issue 13): used for the connection, never shown in an error or log line", async (t) => {
  resetAfter(t);
  const odd = "p@ss:w/rd%";
  const { servers } = await startServer(
    t,
    () =>
      `authorization { users = [ {user: tessera, password: s3cret}, {user: odd, password: ${JSON.stringify(odd)}} ] }`,
  );
  // user:password and a percent-encoded password connect, with and without the scheme.
  for (const url of [
    `nats://tessera:s3cret@${servers}`,
    `tessera:s3cret@${servers}`,
    `odd:${encodeURIComponent(odd)}@${servers}`,
  ]) {
    const nc = await connectNats({ servers: url, name: "url-creds" });
    const kv = await new Kvm(nc).create("url-creds");
    await kv.put("k", "v");
    assert.equal((await kv.get("k"))!.string(), "v", url);
    await nc.close();
  }
  // registerNode takes the servers string: its log lines show the servers redacted.
  const lines: string[] = [];
  const reg = await registerNode({
    nats: `nats://tessera:s3cret@${servers}`,
    role: "memory",
    address: "127.0.0.1:50098",
    heartbeatMs: 100,
    log: (l) => lines.push(l),
  });
  await reg.deregister();
  assert.ok(!lines.join("\n").includes("s3cret"), lines.join("\n"));

  // A wrong password: refused, the error names the servers without the password.
  await assert.rejects(
    connectNats({ servers: `nats://tessera:wr0ng-pw@${servers}`, name: "url-wrong", timeoutMs: 3000 }),
    (e: unknown) => {
      assert.ok(e instanceof NatsAuthError, String(e));
      assert.equal(e.servers, `nats://${servers}`);
      assert.match(e.message, /with user "tessera" from the server URL/);
      assert.ok(!e.message.includes("wr0ng-pw") && !String(e.stack).includes("wr0ng-pw"), e.message);
      return true;
    },
  );
  // An unknown host: the error shows the URL redacted.
  await assert.rejects(
    connectNats({ servers: `nats://tessera:s3cret@no-such-host.invalid:4222`, name: "url-unknown", timeoutMs: 3000 }),
    (e: unknown) => {
      assert.ok(e instanceof NatsError, String(e));
      assert.ok(!e.message.includes("s3cret") && !String(e.stack).includes("s3cret"), e.message);
      return true;
    },
  );
  assert.equal(
    new NatsError("nats://tessera:s3cret@h:4222,t0k@h2:4222,h3:4222", "x").message,
    "NATS at nats://***@h:4222,***@h2:4222,h3:4222: x",
  );
  // URL credentials and process-wide ones together: refused naming --nats, not the secrets.
  setNatsAuth({ kind: "token", token: "t0ken-abc" });
  await assert.rejects(
    connectNats({ servers: `nats://tessera:s3cret@${servers}`, name: "url-and-flags" }),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError && e.option === "--nats", String(e));
      assert.ok(!e.message.includes("s3cret") && !e.message.includes("t0ken-abc"), e.message);
      return true;
    },
  );
});

test("natsServerCredentials and redactNatsServers: the forms, and errors naming --nats without the secret", () => {
  assert.deepEqual(natsServerCredentials("nats://u:p%40w@a:4222, b:4222 ,u:p%40w@c:4222"), {
    servers: ["nats://a:4222", "b:4222", "c:4222"],
    auth: { kind: "user", user: "u", password: "p@w" },
  });
  assert.deepEqual(natsServerCredentials("tls://t0k@a:4222"), {
    servers: ["tls://a:4222"],
    auth: { kind: "token", token: "t0k" },
  });
  assert.deepEqual(natsServerCredentials("127.0.0.1:4222"), { servers: ["127.0.0.1:4222"], auth: { kind: "none" } });
  assert.equal(redactNatsServers("nats://u:pw@a:4222,b:4222"), "nats://***@a:4222,b:4222");
  const refused: [string, RegExp][] = [
    ["u:pw-one@a:4222,u:pw-two@b:4222", /different credentials/],
    [":pw-one@a:4222", /no user/],
    ["u:@a:4222", /no password/],
    ["@a:4222", /empty token/],
    ["u:pw-one%zz@a:4222", /percent-encoding/],
  ];
  for (const [servers, want] of refused) {
    throwsConfig(() => natsServerCredentials(servers), "--nats", want);
    assert.throws(
      () => natsServerCredentials(servers),
      (e: unknown) => !(e as Error).message.includes("pw-"),
    );
  }
});
