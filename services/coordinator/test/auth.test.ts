/**
 * Bearer tokens → tenants (issue 5): the tokens file's checks name the file
 * and entry; identify() refuses a missing or unknown token; the tenant
 * rules (what a tenant may see and submit as) hold.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Code, Metadata, RpcError } from "@tessera/proto";
import { tempDir } from "@tessera/testing";
import {
  Authenticator,
  checkPriorityAllowed,
  loadTokens,
  maySee,
  requireAdmin,
  submitTenant,
  tokenDigest,
} from "../src/api/auth.js";

const A = "token-of-tenant-a-0123456789";
const OPS = "token-of-the-admin-0123456789";

function bearer(token: string | undefined): Metadata {
  const md = new Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  return md;
}

async function tokensFile(text: string): Promise<{ file: string; remove(): Promise<void> }> {
  const dir = await tempDir("tessera-auth-");
  const file = join(dir.path, "tokens.yaml");
  await writeFile(file, text);
  return { file, remove: dir.remove };
}

test("a tokens file maps tokens (plain or SHA-256) to tenants; identify refuses none and unknown", async (t) => {
  const f = await tokensFile(
    `tokens:\n  - { tenant: a, token: ${A} }\n  - { tenant: ops, sha256: "${tokenDigest(OPS).toUpperCase()}", admin: true }\n`,
  );
  t.after(f.remove);
  const auth = new Authenticator(loadTokens(f.file));
  assert.equal(auth.requiresToken, true);
  assert.deepEqual(auth.identify(bearer(A)), { tenant: "a", admin: false });
  assert.deepEqual(auth.identify(bearer(OPS)), { tenant: "ops", admin: true });
  assert.deepEqual(auth.identify(bearer(auth.internalToken)), { tenant: undefined, admin: true });
  for (const md of [bearer(undefined), bearer("not-a-token-of-this-file"), bearer(`${A}x`)]) {
    assert.throws(
      () => auth.identify(md),
      (e: unknown) => e instanceof RpcError && e.code === Code.UNAUTHENTICATED,
    );
  }
  const basic = new Metadata();
  basic.set("authorization", `Basic ${A}`);
  assert.throws(() => auth.identify(basic), /no bearer token/);
  // Without a tokens file every caller is an admin (the transport is the gate).
  assert.deepEqual(new Authenticator(undefined).identify(bearer(undefined)), { tenant: undefined, admin: true });
});

test("a bad tokens file is refused naming the file, the entry and the field", async (t) => {
  const cases: [string, RegExp][] = [
    ["tokens: [", /not YAML or JSON/],
    ["tokens: []", /tokens: at least one entry/],
    [`tokens:\n  - { tenant: "a b", token: ${A} }`, /tokens\.0\.tenant: letters/],
    [`tokens:\n  - { tenant: a }`, /tokens\.0: give exactly one of sha256 and token/],
    [`tokens:\n  - { tenant: a, token: short }`, /tokens\.0\.token: at least 16 characters/],
    [`tokens:\n  - { tenant: a, sha256: abc }`, /tokens\.0\.sha256: 64 hex digits/],
    [`tokens:\n  - { tenant: a, token: ${A}, role: x }`, /tokens\.0/],
    [
      `tokens:\n  - { tenant: a, token: ${A} }\n  - { tenant: b, sha256: ${tokenDigest(A)} }`,
      /tokens\.1: the same token/,
    ],
  ];
  for (const [text, want] of cases) {
    const f = await tokensFile(text);
    t.after(f.remove);
    assert.throws(
      () => loadTokens(f.file),
      (e: unknown) => {
        const m = (e as Error).message;
        assert.ok(m.includes(f.file), `names the file: ${m}`);
        assert.match(m, want);
        return true;
      },
      text,
    );
  }
  assert.throws(() => loadTokens("/nonexistent/tokens.yaml"), /\/nonexistent\/tokens\.yaml: cannot read/);
});

test("a tokens file that is not YAML is refused by line and column, without echoing the line's token (issue 13)", async (t) => {
  const f = await tokensFile(`tokens:\n  - { tenant: a, token: ${A} }}\n  - { tenant: b, token: "${OPS}\n`);
  t.after(f.remove);
  assert.throws(
    () => loadTokens(f.file),
    (e: unknown) => {
      const m = (e as Error).message;
      assert.match(m, /not YAML or JSON: [A-Z_]+ at line \d+, column \d+/);
      assert.ok(!m.includes(A) && !m.includes(OPS), `no token in: ${m}`);
      return true;
    },
  );
});

test("tenant rules: a tenant sees and submits as itself only; admins see all and add nodes", () => {
  const a = { tenant: "a", admin: false };
  const admin = { tenant: "ops", admin: true };
  assert.equal(maySee(a, "a"), true);
  assert.equal(maySee(a, "b"), false);
  assert.equal(maySee(a, undefined), false);
  assert.equal(maySee(admin, "b"), true);
  assert.equal(submitTenant(a, ""), "a");
  assert.equal(submitTenant(a, "a"), "a");
  assert.throws(
    () => submitTenant(a, "b"),
    (e: unknown) => (e as RpcError).code === Code.PERMISSION_DENIED,
  );
  assert.equal(submitTenant(admin, "b"), "b");
  assert.equal(submitTenant(admin, ""), "ops");
  assert.throws(() => requireAdmin(a, "AddNode"), /AddNode: tenant a may not/);
  requireAdmin(admin, "AddNode");
  // Priority high (Generate and SubmitJob): admins only, the field named.
  assert.throws(
    () => checkPriorityAllowed(a, "high"),
    (e: unknown) =>
      (e as RpcError).code === Code.PERMISSION_DENIED &&
      (e as RpcError).message === 'priority: "high" needs an admin token (tenant a)',
  );
  for (const p of ["normal", "low", ""]) checkPriorityAllowed(a, p);
  checkPriorityAllowed(admin, "high");
});
