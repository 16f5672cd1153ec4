/**
 * Issue 13, "any CA-signed certificate may drive any node": certificates
 * carry their role (a SAN URI spiffe://tessera/role/<role>, made by
 * `tessera certs`) and each RPC checks its caller's role
 * (packages/rpc/src/caller-roles.ts). A real gpu-node and memory-node on
 * mutual TLS in this process, called with each certificate of one
 * `tessera certs` run and with certificates the same CA signed without a
 * role:
 * - the gpu-node refuses Load from the operator's client.pem (the
 *   incident: a reload mid-job) and from a memory-node's certificate,
 *   PERMISSION_DENIED naming the RPC and the caller's role, and accepts it
 *   from coordinator.pem; Forward is open to the coordinator and to gpu-nodes
 *   (pipeline stages), Info to every role;
 * - the memory-node refuses OpenSequence from the operator and a gpu-node,
 *   and Attend from the coordinator; accepts each from its role;
 * - a certificate without a role URI, or with a URI naming no role, is
 *   refused by every RPC, health included.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, randomBytes, webcrypto } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  Attention,
  Code,
  Coordinator,
  GpuNode,
  PLAINTEXT,
  checkHealth,
  createClient,
  loadTls,
  setTransportSecurity,
  type TransportSecurity,
} from "@tessera/proto";
import { createCoordinator } from "@tessera/coordinator";
import { createGpuNode } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { readCheckpointHeader } from "@tessera/model";
import { bundled, collect, failure, tempDir } from "@tessera/testing";
import { runCli } from "./helpers.js";

x509.cryptoProvider.set(webcrypto);

const scratch = await tempDir("tessera-caller-roles-");
const dir = join(scratch.path, "certs");
const gpu = createGpuNode({ port: 0 });
const memory = createMemoryNode({ port: 0 });
/** A TLS identity of one `tessera certs` file pair, or of a role-less certificate made below. */
const identities = new Map<string, TransportSecurity>();
const as = (who: string) => identities.get(who)!;

/**
 * A leaf certificate the CA in `dir` signs, with `uris` as its only SAN
 * URIs (none: no role), written as `<name>.pem` + `<name>-key.pem`.
 */
async function signLeaf(name: string, uris: string[]): Promise<void> {
  const caCert = new x509.X509Certificate(await readFile(join(dir, "ca.pem"), "utf8"));
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const caDer = createPrivateKey(await readFile(join(dir, "ca-key.pem"), "utf8")).export({
    format: "der",
    type: "pkcs8",
  });
  const caKey = await webcrypto.subtle.importKey("pkcs8", caDer, alg, false, ["sign"]);
  const keys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: `01${randomBytes(8).toString("hex")}`,
    subject: [{ CN: [name] }],
    issuer: caCert.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: alg,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      ...(uris.length ? [new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: "url", value })))] : []),
    ],
  });
  const key = createPrivateKey({
    key: Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)),
    format: "der",
    type: "pkcs8",
  }).export({ format: "pem", type: "pkcs8" }) as string;
  await writeFile(join(dir, `${name}.pem`), cert.toString("pem"));
  await writeFile(join(dir, `${name}-key.pem`), key);
}

before(async () => {
  const run = await runCli(["certs", "--out", dir, "--quiet"]);
  assert.equal(run.code, 0, run.stderr);
  await signLeaf("no-role", []);
  await signLeaf("unknown-role", ["spiffe://tessera/role/admin", "https://example.com/operator"]);
  const ca = join(dir, "ca.pem");
  for (const name of ["coordinator", "gpu-node", "memory-node", "storage-node", "client", "no-role", "unknown-role"])
    identities.set(name, loadTls({ ca, cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) }));
  // The nodes' servers: mutual TLS, with their own role's certificate.
  setTransportSecurity(as("gpu-node"));
  await gpu.start();
  setTransportSecurity(as("memory-node"));
  await memory.start();
  setTransportSecurity(PLAINTEXT);
});

after(async () => {
  await Promise.all([gpu.close(), memory.close()]);
  await scratch.remove();
});

/** A client of `service` at `address` with the identity `who`, closed after `fn`. */
async function withClient<S extends typeof GpuNode | typeof Attention | typeof Coordinator, T>(
  service: S,
  address: string,
  who: string,
  fn: (c: ReturnType<typeof createClient<S>>) => Promise<T>,
): Promise<T> {
  const client = createClient(service, address, {}, { security: as(who) });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/** The status a bidi stream ends with after it is opened and half-closed at once (OK: the call was let in). */
async function openAndClose(
  stream: { end(): void } & AsyncIterable<unknown>,
): Promise<{ code: Code; message: string }> {
  stream.end();
  try {
    await collect(stream);
    return { code: Code.OK, message: "" };
  } catch (err) {
    return failure(Promise.reject(err));
  }
}

test("a gpu-node refuses Load from the operator's client.pem and a memory-node's certificate (PERMISSION_DENIED naming the RPC and the role) and accepts it from coordinator.pem", async () => {
  const { nLayers } = (await readCheckpointHeader(bundled.model)).shape;
  const load = { modelPath: bundled.model, layerStart: 0, layerEnd: nLayers, embed: true, head: true };
  const operator = await failure(withClient(GpuNode, gpu.address, "client", (c) => c.load(load)));
  assert.equal(operator.code, Code.PERMISSION_DENIED, operator.message);
  assert.equal(
    operator.message,
    "tessera.v1.GpuNode/Load: the caller's certificate (CN=tessera-client) has role operator; " +
      "tessera.v1.GpuNode/Load may be called by coordinator",
  );
  const node = await failure(withClient(GpuNode, gpu.address, "memory-node", (c) => c.load(load)));
  assert.equal(node.code, Code.PERMISSION_DENIED, node.message);
  assert.match(node.message, /^tessera\.v1\.GpuNode\/Load: .*\(CN=tessera-memory-node\) has role memory-node;/);

  const loaded = await withClient(GpuNode, gpu.address, "coordinator", (c) => c.load(load));
  assert.equal(loaded.shape?.nLayers, nLayers);

  // Forward: the coordinator and upstream gpu-nodes; Info: anyone with a role.
  for (const who of ["coordinator", "gpu-node"]) {
    const f = await withClient(GpuNode, gpu.address, who, (c) => openAndClose(c.forward()));
    assert.equal(f.code, Code.OK, `${who}: ${f.message}`);
  }
  const operatorForward = await withClient(GpuNode, gpu.address, "client", (c) => openAndClose(c.forward()));
  assert.equal(operatorForward.code, Code.PERMISSION_DENIED, operatorForward.message);
  assert.match(
    operatorForward.message,
    /^tessera\.v1\.GpuNode\/Forward: .* has role operator; .* by coordinator, gpu-node$/,
  );
  for (const who of ["client", "coordinator", "gpu-node", "memory-node", "storage-node"]) {
    const info = await withClient(GpuNode, gpu.address, who, (c) => c.info({}));
    assert.equal(info.modelPath, bundled.model, who);
  }
});

test("a memory-node refuses OpenSequence from the operator and a gpu-node, and Attend from the coordinator; each role's own calls work", async () => {
  const open = { seqId: "s1", layout: { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8 }, maxPositions: 8 };
  for (const [who, role] of [
    ["client", "operator"],
    ["gpu-node", "gpu-node"],
    ["storage-node", "storage-node"],
  ] as const) {
    const f = await failure(withClient(Attention, memory.address, who, (c) => c.openSequence(open)));
    assert.equal(f.code, Code.PERMISSION_DENIED, `${who}: ${f.message}`);
    assert.match(
      f.message,
      new RegExp(`^tessera\\.v1\\.Attention/OpenSequence: .* has role ${role}; .* by coordinator$`),
    );
  }
  const attend = await withClient(Attention, memory.address, "coordinator", (c) => openAndClose(c.attend()));
  assert.equal(attend.code, Code.PERMISSION_DENIED, attend.message);
  assert.match(attend.message, /^tessera\.v1\.Attention\/Attend: .* has role coordinator; .* by gpu-node$/);

  const gpuAttend = await withClient(Attention, memory.address, "gpu-node", (c) => openAndClose(c.attend()));
  assert.equal(gpuAttend.code, Code.OK, gpuAttend.message);
  await withClient(Attention, memory.address, "coordinator", async (c) => {
    await c.openSequence(open);
    await c.closeSequence({ seqId: "s1" });
  });
  const info = await withClient(Attention, memory.address, "client", (c) => c.info({}));
  assert.equal(info.role, "memory");
});

test("a certificate the CA signed without a role URI, or with one naming no role, is refused by every RPC and by health", async () => {
  for (const who of ["no-role", "unknown-role"]) {
    for (const [name, call] of [
      ["GpuNode/Info", () => withClient(GpuNode, gpu.address, who, (c) => c.info({}))],
      ["Attention/Info", () => withClient(Attention, memory.address, who, (c) => c.info({}))],
      [
        "Attention/CloseSequence",
        () => withClient(Attention, memory.address, who, (c) => c.closeSequence({ seqId: "x" })),
      ],
    ] as const) {
      const f = await failure(call());
      assert.equal(f.code, Code.PERMISSION_DENIED, `${who} ${name}: ${f.message}`);
      assert.equal(
        f.message.split(";")[0],
        `tessera.v1.${name}: the caller's certificate (CN=${who}) carries no Tessera role ` +
          "(a SAN URI spiffe://tessera/role/<role>",
      );
    }
    // checkHealth says UNREACHABLE for any failed call; the operator's certificate gets SERVING below.
    assert.equal(await checkHealth(memory.address, "tessera.v1.Attention", 5000, as(who)), "UNREACHABLE", who);
  }
  assert.equal(await checkHealth(memory.address, "tessera.v1.Attention", 5000, as("client")), "SERVING");
});

test("a coordinator on mutual TLS without --tokens takes calls from the operator and the coordinator only (its job worker), not from a node's certificate", async () => {
  setTransportSecurity(as("coordinator"));
  const coordinator = createCoordinator({
    port: 0,
    gpuNodes: [gpu.address],
    memoryNodes: [memory.address],
    log: () => {},
  });
  try {
    await coordinator.start();
  } finally {
    setTransportSecurity(PLAINTEXT);
  }
  try {
    for (const who of ["client", "coordinator"]) {
      const nodes = await withClient(Coordinator, coordinator.address, who, (c) => c.listNodes({}));
      assert.ok(
        nodes.nodes.some((n) => n.address === gpu.address),
        who,
      );
    }
    for (const who of ["gpu-node", "memory-node", "storage-node"]) {
      const refused = await failure(withClient(Coordinator, coordinator.address, who, (c) => c.listNodes({})));
      assert.equal(refused.code, Code.PERMISSION_DENIED, `${who}: ${refused.message}`);
      assert.match(refused.message, new RegExp(`^tessera\\.v1\\.Coordinator/ListNodes: .* has role ${who};`));
    }
  } finally {
    await coordinator.close();
  }
});
