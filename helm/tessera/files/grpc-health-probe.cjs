// Readiness probe of a Tessera container: grpc.health.v1.Health/Check("") on ADDRESS over the
// pod's own mutual TLS (TESSERA_TLS_CA, TESSERA_TLS_CERT, TESSERA_TLS_KEY from the container's
// environment). Exit 0 when the answer is SERVING, 1 otherwise (the reason on stderr).
// Kubernetes' built-in grpc probe cannot present a client certificate, hence this script.
//   node grpc-health-probe.cjs 127.0.0.1:7302 [timeout ms, default 3000]
// @grpc/grpc-js is taken from the image's /app (TESSERA_APP_DIR overrides it).
"use strict";
const { readFileSync } = require("node:fs");
const { createRequire } = require("node:module");
const { join } = require("node:path");

const [address, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg ?? 3000);
const SERVING_STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

function fail(message) {
  process.stderr.write(`grpc-health-probe ${address ?? ""}: ${message}\n`);
  process.exit(1);
}

if (!address) fail("usage: grpc-health-probe.cjs HOST:PORT [TIMEOUT_MS]");
const appDir = process.env.TESSERA_APP_DIR ?? "/app";
const grpc = createRequire(join(appDir, "package.json"))("@grpc/grpc-js");

function pem(variable) {
  const file = process.env[variable];
  if (!file) fail(`${variable} is not set`);
  try {
    return readFileSync(file);
  } catch (err) {
    return fail(`${variable}=${file}: ${err.message}`);
  }
}

// HealthCheckRequest{service: ""} is the empty message; HealthCheckResponse is field 1 (varint).
const serialize = () => Buffer.alloc(0);
function deserialize(bytes) {
  let status = 0;
  for (let i = 0; i < bytes.length;) {
    const tag = bytes[i++];
    if (tag !== 0x08) throw new Error(`unexpected field tag ${tag} in HealthCheckResponse`);
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const b = bytes[i++];
      value |= (b & 0x7f) << shift;
      if (b < 0x80) break;
    }
    status = value;
  }
  return status;
}

const credentials = grpc.credentials.createSsl(pem("TESSERA_TLS_CA"), pem("TESSERA_TLS_KEY"), pem("TESSERA_TLS_CERT"));
// The certificate names localhost (`tessera certs` always adds it); the probe dials 127.0.0.1.
const client = new grpc.Client(address, credentials, { "grpc.ssl_target_name_override": "localhost" });
client.makeUnaryRequest(
  "/grpc.health.v1.Health/Check",
  serialize,
  deserialize,
  {},
  new grpc.Metadata(),
  { deadline: Date.now() + timeoutMs },
  (err, status) => {
    client.close();
    if (err) fail(`${err.code === grpc.status.DEADLINE_EXCEEDED ? "no answer" : "failed"}: ${err.message}`);
    const name = SERVING_STATUS[status] ?? String(status);
    if (name !== "SERVING") fail(`status ${name}`);
    process.exit(0);
  },
);
