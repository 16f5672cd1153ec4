/**
 * Issue 13: the command line a traced process exports as its resource's
 * `process.command_args` has no secret: the values of secret flags (both
 * `--flag value` and `--flag=value`) and URL userinfo are redacted, the
 * rest kept; OTEL_NODE_RESOURCE_DETECTORS picks the detectors as the SDK does.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { REDACTED, isSecretFlag, redactArgv, redactUserinfo } from "../src/index.js";
import { redactedProcessDetector, resourceDetectorsOf } from "../src/resource-detectors.js";

test("secret flags by name: tokens and passwords, not token counts, tokenizer paths or key files", () => {
  for (const f of ["--token", "--nats-password", "--nats-token", "--api-token", "--client-secret", "--db-passwd"]) {
    assert.equal(isSecretFlag(f), true, f);
  }
  for (const f of ["--tokens", "--max-tokens", "--tokenizer", "--tls-key", "--nats-key", "--nats-user", "--nats"]) {
    assert.equal(isSecretFlag(f), false, f);
  }
});

test("redactArgv: both flag forms and URL userinfo; everything else kept in order", () => {
  const argv = [
    "/usr/bin/node",
    "tessera",
    "submit",
    "jobs.jsonl",
    "--token",
    "tok-SECRET-1",
    "--nats-password=pw-SECRET-2",
    "--nats-user",
    "alice",
    "--nats",
    "nats://bob:pw-SECRET-3@10.0.0.1:4222,tok-SECRET-4@10.0.0.2:4222,10.0.0.3:4222",
    "--nats=carol:pw-SECRET-5@h:4222",
    "--max-tokens",
    "16",
    "--token",
  ];
  const out = redactArgv(argv);
  assert.deepEqual(out, [
    "/usr/bin/node",
    "tessera",
    "submit",
    "jobs.jsonl",
    "--token",
    REDACTED,
    `--nats-password=${REDACTED}`,
    "--nats-user",
    "alice",
    "--nats",
    `nats://${REDACTED}@10.0.0.1:4222,${REDACTED}@10.0.0.2:4222,10.0.0.3:4222`,
    `--nats=${REDACTED}@h:4222`,
    "--max-tokens",
    "16",
    "--token",
  ]);
  assert.ok(!out.join(" ").includes("SECRET"), out.join(" "));
  assert.equal(redactUserinfo("http://example.com/a@b"), "http://example.com/a@b", "an @ in a path is not userinfo");
});

test("the process detector's command_args are redacted; the detectors follow OTEL_NODE_RESOURCE_DETECTORS", (t) => {
  const saved = process.argv;
  t.after(() => (process.argv = saved));
  process.argv = [saved[0]!, "tessera", "--token", "tok-SECRET-6", "--nats", "u:pw-SECRET-7@h:4222"];
  const { attributes } = redactedProcessDetector.detect();
  const args = attributes!["process.command_args"] as string[];
  assert.ok(args.includes("--token") && args.includes(REDACTED), args.join(" "));
  assert.ok(!JSON.stringify(attributes).includes("SECRET"), JSON.stringify(attributes));
  assert.equal(attributes!["process.pid"], process.pid);

  assert.equal(resourceDetectorsOf({}).length, 5, "service (2), host (2), process");
  assert.ok(resourceDetectorsOf({}).includes(redactedProcessDetector));
  assert.deepEqual(resourceDetectorsOf({ OTEL_NODE_RESOURCE_DETECTORS: "none" }), []);
  assert.deepEqual(resourceDetectorsOf({ OTEL_NODE_RESOURCE_DETECTORS: "process" }), [redactedProcessDetector]);
  assert.equal(resourceDetectorsOf({ OTEL_NODE_RESOURCE_DETECTORS: "all" }).length, 5);
  assert.equal(resourceDetectorsOf({ OTEL_NODE_RESOURCE_DETECTORS: "host, bogus" }).length, 2);
});
