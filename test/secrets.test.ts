/**
 * Issue 13, secrets: `tessera submit` run as a child process with secrets
 * given as flags (`--token`, `--nats-password=...`) or in the NATS URL
 * (`nats://user:password@127.0.0.1:4222`, the real server there) exports
 * its spans over OTLP/HTTP (protobuf, uncompressed) to a receiver in this
 * test: the raw bytes of every export request (resource included) must
 * hold no secret, and neither may the command's output; URL credentials
 * are used (the submit succeeds) and an unreachable URL's error does not
 * show them.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { JobStore, connectNats } from "@tessera/nats";
import { tempDir, tesseraJobFile } from "@tessera/testing";
import { runCli } from "./helpers.js";

const NATS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";

/** An OTLP/HTTP receiver on a loopback port keeping the raw body of every POST /v1/traces. */
async function startRawReceiver(t: TestContext) {
  const bodies: Buffer[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.url === "/v1/traces") bodies.push(Buffer.concat(chunks));
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  return { endpoint: `http://127.0.0.1:${port}`, bodies };
}

test("secrets given as flags or in the NATS URL appear in no exported span, and URL credentials are used", async (t) => {
  const receiver = await startRawReceiver(t);
  const dir = await tempDir("tessera-secrets-");
  t.after(dir.remove);
  const file = join(dir.path, "job.jsonl");
  await writeFile(file, tesseraJobFile(1));
  const prefix = `s${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: NATS, name: "secrets-test" });
  t.after(async () => {
    await (await JobStore.open(nc, { prefix })).destroy();
    await nc.close();
  });
  const env = {
    ...process.env,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
    OTEL_EXPORTER_OTLP_COMPRESSION: "none",
    OTEL_BSP_SCHEDULE_DELAY: "100",
    OTEL_METRICS_EXPORTER: "none",
    OTEL_LOGS_EXPORTER: "none",
  };
  const secrets = {
    token: `tok-${randomBytes(8).toString("hex")}`,
    flagPassword: `pwf-${randomBytes(8).toString("hex")}`,
    urlPassword: `pwu-${randomBytes(8).toString("hex")}`,
  };
  // The real server has no authorization: it accepts any user and password.
  const runs: [string, string[]][] = [
    [
      "flags",
      ["--nats", NATS, "--token", secrets.token, "--nats-user", "tracer", `--nats-password=${secrets.flagPassword}`],
    ],
    ["url", ["--nats", `nats://tracer:${secrets.urlPassword}@${NATS}`]],
  ];
  for (const [name, flags] of runs) {
    const before = receiver.bodies.length;
    const r = await runCli(["submit", file, "--nats-prefix", prefix, "--job-id", `job-${name}`, ...flags], {
      env,
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, `${name}: ${r.stderr}`);
    for (const s of Object.values(secrets)) {
      assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `${name}: output shows a secret: ${r.stderr}`);
    }
    const sent = Buffer.concat(receiver.bodies.slice(before));
    assert.ok(sent.includes("tessera.job.submit"), `${name}: the submit span was exported`);
    assert.ok(sent.includes("process.command_args"), `${name}: the process resource was exported`);
    assert.ok(sent.includes(`job-${name}`), `${name}: the command line is there, redacted`);
    for (const [what, s] of Object.entries(secrets)) {
      assert.ok(!sent.includes(s), `${name}: the exported spans hold the ${what}`);
    }
  }
  const store = await JobStore.open(nc, { prefix });
  assert.equal((await store.get("job-url"))?.promptsTotal, 1, "submitted with the URL's credentials");
});

test("an unreachable NATS URL with credentials, or URL and flag credentials together: errors without the secret", async () => {
  const password = `pw-${randomBytes(8).toString("hex")}`;
  const unreachable = await runCli(["jobs", "--nats", `nats://tracer:${password}@127.0.0.1:1`], { timeoutMs: 60_000 });
  assert.notEqual(unreachable.code, 0);
  assert.match(unreachable.stderr, /NATS at nats:\/\/127\.0\.0\.1:1\b/);
  assert.ok(!unreachable.stderr.includes(password), unreachable.stderr);
  const both = await runCli(["jobs", "--nats", `tracer:${password}@${NATS}`, "--nats-token", "another-token"], {
    timeoutMs: 60_000,
  });
  assert.notEqual(both.code, 0);
  assert.match(both.stderr, /--nats: credentials in a server URL cannot be combined with/);
  assert.ok(!both.stderr.includes(password) && !both.stderr.includes("another-token"), both.stderr);
});
