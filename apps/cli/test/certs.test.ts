// `tessera certs` and `tessera token` (certs.ts) on real files in a temp
// folder, checked with node:crypto's X509Certificate and real mutual-TLS
// handshakes over node:tls and @grpc/grpc-js on loopback.
import assert from "node:assert/strict";
import { X509Certificate, createHash, createPrivateKey } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { makeCertificates, tokenCommand, type CertsOptions } from "../src/commands/certs.js";

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tessera-certs-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const options = (out: string, more: Partial<CertsOptions> = {}): CertsOptions => ({
  out,
  hosts: ["node-7.example.com", "10.1.2.3"],
  days: 30,
  force: false,
  quiet: true,
  ...more,
});

const read = (dir: string, f: string) => readFile(join(dir, f), "utf8");
/** The cluster roles' certificates, one each. */
const SERVING = ["coordinator", "gpu-node", "memory-node", "storage-node"] as const;
/** Every file `tessera certs` writes, in the order written: the CA, then each leaf's key and certificate. */
const ALL = ["ca-key.pem", "ca.pem", ...[...SERVING, "client"].flatMap((f) => [`${f}-key.pem`, `${f}.pem`])];
/** Index in ALL of the CA and of gpu-node.pem. */
const CA_AT = 1;
const GPU_AT = ALL.indexOf("gpu-node.pem");

test("makeCertificates writes a CA, one certificate per role and a client certificate that chain, with the SANs, role URIs and 0600 keys", async (t) => {
  const dir = await tempDir(t);
  const { written } = await makeCertificates(options(dir));
  assert.deepEqual(
    written,
    ALL.map((f) => join(dir, f)),
  );

  const ca = new X509Certificate(await read(dir, "ca.pem"));
  const client = new X509Certificate(await read(dir, "client.pem"));
  const roles = await Promise.all(
    SERVING.map(
      async (r) => [new X509Certificate(await read(dir, `${r}.pem`)), `tessera-${r}`, `${r}-key.pem`] as const,
    ),
  );
  assert.equal(ca.subject, "CN=Tessera development CA");
  assert.equal(ca.ca, true);
  assert.equal(ca.checkIssued(ca), true);
  assert.equal(ca.checkPrivateKey(createPrivateKey(await read(dir, "ca-key.pem"))), true);
  for (const [cert, cn, key] of [...roles, [client, "tessera-client", "client-key.pem"] as const]) {
    assert.equal(cert.subject, `CN=${cn}`);
    assert.equal(cert.issuer, "CN=Tessera development CA");
    assert.equal(cert.ca, false);
    assert.equal(cert.checkIssued(ca), true, cn);
    assert.equal(cert.verify(ca.publicKey), true, cn);
    const pem = await read(dir, key);
    assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/);
    const k = createPrivateKey(pem);
    assert.equal(k.asymmetricKeyType, "ec");
    assert.equal(k.asymmetricKeyDetails?.namedCurve, "prime256v1");
    assert.equal(cert.checkPrivateKey(k), true, key);
    // Valid from (about) now for 30 days.
    const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
    assert.ok(days > 29.9 && days <= 30, `${cn} valid for ${days} days`);
  }
  for (const [i, [cert]] of roles.entries()) {
    assert.equal(
      cert.subjectAltName,
      "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:node-7.example.com, IP Address:10.1.2.3, " +
        `URI:spiffe://tessera/role/${SERVING[i]}`,
    );
    assert.equal(cert.checkHost("node-7.example.com"), "node-7.example.com");
    assert.equal(cert.checkIP("10.1.2.3"), "10.1.2.3");
    assert.deepEqual(cert.keyUsage, ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]); // serverAuth, clientAuth
  }
  // The operator's certificate: a client only (no host names, no serverAuth), role operator.
  assert.deepEqual(client.keyUsage, ["1.3.6.1.5.5.7.3.2"]);
  assert.equal(client.subjectAltName, "URI:spiffe://tessera/role/operator");

  for (const f of ALL) assert.equal((await stat(join(dir, f))).mode & 0o777, f.endsWith("-key.pem") ? 0o600 : 0o644, f);
  await assert.rejects(stat(join(dir, "node.pem")), { code: "ENOENT" }, "no role-less node.pem any more");
});

test("a wildcard host is a DNS SAN; bad hosts and days are refused by name before anything is written", async (t) => {
  const dir = await tempDir(t);
  await makeCertificates(options(dir, { hosts: ["*.tessera.internal", "[fd00::5]"] }));
  const node = new X509Certificate(await read(dir, "memory-node.pem"));
  assert.equal(
    node.subjectAltName,
    "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:*.tessera.internal, IP Address:FD00:0:0:0:0:0:0:5, " +
      "URI:spiffe://tessera/role/memory-node",
  );
  assert.equal(node.checkHost("gpu-1.tessera.internal"), "*.tessera.internal");

  const empty = join(dir, "empty");
  await assert.rejects(makeCertificates(options(empty, { hosts: ["bad_host!"] })), {
    message: '--host: "bad_host!" is neither an IP address nor a DNS name',
  });
  await assert.rejects(makeCertificates(options(empty, { hosts: ["10.0.0.300"] })), /"10\.0\.0\.300"/);
  await assert.rejects(makeCertificates(options(empty, { days: 3651 })), {
    message: "--days: must be an integer in [1, 3650], got 3651",
  });
  await assert.rejects(makeCertificates(options(empty, { days: 1.5 })), /--days/);
  await assert.rejects(stat(empty), { code: "ENOENT" });
});

/**
 * A TLS server on loopback that asks for and checks client certificates and
 * answers a byte b with b + 1; resolves its port and the CN of each client it
 * let through (a refused client never gets a secure connection).
 */
async function mtlsServer(t: TestContext, dir: string): Promise<{ port: number; accepted: string[] }> {
  const accepted: string[] = [];
  const server = tls.createServer(
    {
      key: await read(dir, "memory-node-key.pem"),
      cert: await read(dir, "memory-node.pem"),
      ca: await read(dir, "ca.pem"),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (socket) => {
      accepted.push(String(socket.getPeerCertificate().subject.CN));
      socket.once("data", (b: Buffer) => socket.end(Buffer.from([b[0]! + 1])));
    },
  );
  server.on("tlsClientError", () => {}); // refused clients are the point
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as AddressInfo).port, accepted };
}

/**
 * Connects, sends byte 41 and resolves the byte that came back, or what ended
 * the connection without one: the client's error, else "closed". (With TLS
 * 1.3 the client's handshake ends before the server has checked its
 * certificate, so a refusal shows as an alert or as a bare close.)
 */
async function exchange(port: number, options: tls.ConnectionOptions): Promise<number | string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ...options }, () =>
      socket.write(Buffer.from([41])),
    );
    let got: number | undefined;
    socket.on("data", (b: Buffer) => (got = b[0]));
    socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    socket.on("close", () => resolve(got ?? "closed"));
  });
}

test("mutual TLS over node:tls: the client certificate is accepted; one from another CA and none are refused", async (t) => {
  const dir = await tempDir(t);
  const other = await tempDir(t);
  await makeCertificates(options(dir));
  await makeCertificates(options(other));
  const { port, accepted } = await mtlsServer(t, dir);
  const ca = await read(dir, "ca.pem");

  assert.equal(
    await exchange(port, { ca, key: await read(dir, "client-key.pem"), cert: await read(dir, "client.pem") }),
    42,
  );
  // A role's certificate is also a client certificate (nodes call each other).
  assert.equal(
    await exchange(port, { ca, key: await read(dir, "gpu-node-key.pem"), cert: await read(dir, "gpu-node.pem") }),
    42,
  );
  assert.deepEqual(accepted, ["tessera-client", "tessera-gpu-node"]);

  const foreign = await exchange(port, {
    ca,
    key: await read(other, "client-key.pem"),
    cert: await read(other, "client.pem"),
  });
  assert.ok(
    ["closed", "ECONNRESET", "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA"].includes(String(foreign)),
    `another CA's client: ${foreign}`,
  );
  const none = await exchange(port, { ca });
  assert.ok(
    ["closed", "ECONNRESET", "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"].includes(String(none)),
    `no certificate: ${none}`,
  );
  assert.deepEqual(accepted, ["tessera-client", "tessera-gpu-node"], "the refused clients never got through");

  // And a client refuses the server when it trusts another CA (the server sends its CA with its certificate,
  // as Node completes the chain from `ca`, hence "self-signed in chain").
  assert.equal(await exchange(port, { ca: await read(other, "ca.pem") }), "SELF_SIGNED_CERT_IN_CHAIN");
  assert.deepEqual(accepted, ["tessera-client", "tessera-gpu-node"]);
});

test("mutual TLS over @grpc/grpc-js: createSsl credentials from the files make a call; another CA's client cannot", async (t) => {
  const dir = await tempDir(t);
  const other = await tempDir(t);
  await makeCertificates(options(dir));
  await makeCertificates(options(other));
  const file = (d: string, f: string) => readFile(join(d, f));
  const echo = {
    path: "/tessera.test.Echo/Echo",
    requestStream: false,
    responseStream: false,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  } as const;
  const server = new grpc.Server();
  server.addService(
    { Echo: echo },
    { Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request) },
  );
  const creds = grpc.ServerCredentials.createSsl(
    await file(dir, "ca.pem"),
    [{ private_key: await file(dir, "gpu-node-key.pem"), cert_chain: await file(dir, "gpu-node.pem") }],
    true,
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", creds, (err, p) => (err ? reject(err) : resolve(p))),
  );
  t.after(() => server.forceShutdown());

  const Client = grpc.makeGenericClientConstructor({ Echo: echo }, "Echo");
  const call = async (d: string) => {
    const client = new Client(
      `localhost:${port}`,
      grpc.credentials.createSsl(
        await file(dir, "ca.pem"),
        await file(d, "client-key.pem"),
        await file(d, "client.pem"),
      ),
    );
    try {
      return await new Promise<Buffer>((resolve, reject) =>
        client.makeUnaryRequest(
          echo.path,
          echo.requestSerialize,
          echo.responseDeserialize,
          Buffer.from("hello"),
          { deadline: Date.now() + 10_000 },
          (err, res) => (err ? reject(err) : resolve(res!)),
        ),
      );
    } finally {
      client.close();
    }
  };
  assert.equal((await call(dir)).toString(), "hello");
  await assert.rejects(call(other), { code: grpc.status.UNAVAILABLE });
});

test("a rerun keeps the CA and refuses existing leaf files by name; --force makes everything anew", async (t) => {
  const dir = await tempDir(t);
  await makeCertificates(options(dir));
  const before = await Promise.all(ALL.map((f) => read(dir, f)));

  await assert.rejects(makeCertificates(options(dir)), {
    message: `${join(dir, "coordinator.pem")} exists (pass --force to overwrite it and make a new CA)`,
  });
  assert.deepEqual(await Promise.all(ALL.map((f) => read(dir, f))), before, "a refused run writes nothing");

  // With the leaves gone, new ones are signed by the same CA, whose files are left alone.
  for (const f of ALL.slice(2)) await rm(join(dir, f));
  const { written } = await makeCertificates(options(dir));
  assert.deepEqual(
    written,
    ALL.slice(2).map((f) => join(dir, f)),
  );
  assert.equal(await read(dir, "ca.pem"), before[CA_AT]);
  assert.equal(await read(dir, "ca-key.pem"), before[0]);
  const ca = new X509Certificate(before[CA_AT]!);
  const gpu = new X509Certificate(await read(dir, "gpu-node.pem"));
  assert.notEqual(await read(dir, "gpu-node.pem"), before[GPU_AT]);
  assert.equal(gpu.verify(ca.publicKey), true);
  assert.equal(new X509Certificate(await read(dir, "client.pem")).verify(ca.publicKey), true);
  // One leaf left is enough to refuse the run.
  for (const f of ALL.slice(2, -2)) await rm(join(dir, f));
  await assert.rejects(makeCertificates(options(dir)), {
    message: `${join(dir, "client.pem")} exists (pass --force to overwrite it and make a new CA)`,
  });

  const { written: forced } = await makeCertificates(options(dir, { force: true, days: 365 }));
  assert.deepEqual(
    forced,
    ALL.map((f) => join(dir, f)),
  );
  const after = await Promise.all(ALL.map((f) => read(dir, f)));
  for (const [i, f] of ALL.entries()) assert.notEqual(after[i], before[i], f);
  const newCa = new X509Certificate(after[CA_AT]!);
  assert.equal(new X509Certificate(after[GPU_AT]!).verify(newCa.publicKey), true);
  assert.equal(new X509Certificate(after[GPU_AT]!).verify(ca.publicKey), false);
  for (const f of ALL.filter((f) => f.endsWith("-key.pem")))
    assert.equal((await stat(join(dir, f))).mode & 0o777, 0o600, f);
});

test("a leaf signed by a reused CA ends no later than the CA", async (t) => {
  const dir = await tempDir(t);
  await makeCertificates(options(dir, { days: 10 }));
  const ca = new X509Certificate(await read(dir, "ca.pem"));
  for (const f of ALL.slice(2)) await rm(join(dir, f));
  await makeCertificates(options(dir, { days: 100 }));
  for (const r of SERVING) assert.equal(new X509Certificate(await read(dir, `${r}.pem`)).validTo, ca.validTo, r);
});

test("tokenCommand prints a 32-byte base64url token and the tokens-file entry with its sha256", (t) => {
  const out: string[] = [];
  const err: string[] = [];
  t.mock.method(process.stdout, "write", (s: string) => (out.push(s), true));
  t.mock.method(process.stderr, "write", (s: string) => (err.push(s), true));
  assert.equal(tokenCommand({ tenant: "team-a.prod", admin: true }), 0);
  assert.equal(tokenCommand({ tenant: "b_2", admin: false }), 0);
  t.mock.restoreAll();

  assert.equal(out.length, 2);
  const tokens = out.map((s) => s.replace(/\n$/, ""));
  for (const token of tokens) {
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(Buffer.from(token, "base64url").length, 32);
  }
  assert.notEqual(tokens[0], tokens[1]);
  const sha = (s: string) => createHash("sha256").update(s, "utf8").digest("hex");
  assert.deepEqual(err, [
    `- { tenant: "team-a.prod", sha256: ${sha(tokens[0]!)}, admin: true }\n`,
    `- { tenant: "b_2", sha256: ${sha(tokens[1]!)}, admin: false }\n`,
  ]);
  assert.throws(() => tokenCommand({ tenant: "", admin: false }), { message: /--tenant: "" is not/ });
  assert.throws(() => tokenCommand({ tenant: "a".repeat(65), admin: false }), /--tenant/);
});
