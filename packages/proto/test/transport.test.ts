/**
 * Transport security rules that need no certificate: which hosts are
 * loopback, and that plaintext is refused off loopback on both sides
 * (servers and clients), naming the address.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  Attention,
  Code,
  PLAINTEXT,
  RpcError,
  createClient,
  hostOf,
  isLoopbackHost,
  loadTls,
  serverCredentials,
  checkHealth,
} from "../src/index.js";

test("loopback hosts and host:port parsing", () => {
  for (const h of ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
    assert.ok(isLoopbackHost(h), h);
  for (const h of ["0.0.0.0", "10.0.0.1", "::", "example.com", "128.0.0.1", "localhost.example.com", ""])
    assert.ok(!isLoopbackHost(h), h);
  assert.equal(hostOf("127.0.0.1:7302"), "127.0.0.1");
  assert.equal(hostOf("[::1]:7302"), "::1");
  assert.equal(hostOf("node-0.memory.tessera.svc:7302"), "node-0.memory.tessera.svc");
  assert.equal(hostOf("::1"), "::1");
});

test("plaintext is refused off loopback, on servers and clients, naming the address", async () => {
  assert.throws(() => serverCredentials(PLAINTEXT, "0.0.0.0"), /plaintext gRPC on 0\.0\.0\.0 refused: .*loopback only/);
  serverCredentials(PLAINTEXT, "127.0.0.1");
  assert.throws(
    () => createClient(Attention, "10.1.2.3:7302", {}, { security: PLAINTEXT }),
    (e: unknown) =>
      e instanceof RpcError &&
      e.code === Code.FAILED_PRECONDITION &&
      /plaintext gRPC to 10\.1\.2\.3:7302 refused/.test(e.message),
  );
  createClient(Attention, "127.0.0.1:1", {}, { security: PLAINTEXT }).close();
  assert.equal(await checkHealth("10.1.2.3:7302", "", 100, PLAINTEXT), "UNREACHABLE");
});

test("TLS files that cannot be read or do not pair are named", () => {
  assert.throws(() => loadTls({ ca: "/nonexistent/ca.pem" }), /TLS CA \/nonexistent\/ca\.pem: cannot read/);
  assert.throws(
    () => loadTls({ ca: "/nonexistent/ca.pem", cert: "/nonexistent/node.pem" }),
    /TLS certificate \/nonexistent\/node\.pem given without its key \(--tls-key\)/,
  );
  assert.throws(() => loadTls({ ca: fileURLToPath(import.meta.url) }), /not a PEM certificate/);
});
