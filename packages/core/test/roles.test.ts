// Certificate roles (issue 13): the SAN URIs a certificate carries, as Node's
// X509Certificate.subjectAltName and TLS peer certificates write them.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CERT_ROLES, certRoleOf, roleUri, rolesOfSubjectAltName } from "../src/index.js";

test("rolesOfSubjectAltName reads spiffe://tessera/role/<role> URIs, quoted ones included, and ignores the rest", () => {
  assert.deepEqual(CERT_ROLES, ["coordinator", "gpu-node", "memory-node", "storage-node", "operator"]);
  assert.equal(roleUri(certRoleOf("gpu")), "spiffe://tessera/role/gpu-node");
  assert.deepEqual(rolesOfSubjectAltName("DNS:localhost, IP Address:127.0.0.1, URI:spiffe://tessera/role/gpu-node"), [
    "gpu-node",
  ]);
  // Node quotes a name holding a comma; a role may appear twice, or with another role.
  assert.deepEqual(
    rolesOfSubjectAltName(
      'URI:"spiffe://tessera/role/x,y", DNS:"q\\"a, b", URI:spiffe://tessera/role/operator, URI:spiffe://tessera/role/coordinator, ' +
        "URI:spiffe://tessera/role/operator",
    ),
    ["operator", "coordinator"],
  );
  for (const none of [
    undefined,
    "",
    "DNS:spiffe://tessera/role/coordinator",
    "URI:spiffe://tessera/role/admin",
    "URI:spiffe://other/role/coordinator",
    "URI:https://tessera/role/coordinator",
    "URI:spiffe://tessera/role/coordinator/extra",
    // A DNS name that holds ", URI:..." is quoted by Node: it is one DNS name, not a role.
    'DNS:"a, URI:spiffe://tessera/role/coordinator, b"',
    'DNS:"a, URI:spiffe://tessera/role/coordinator"',
  ])
    assert.deepEqual(rolesOfSubjectAltName(none), [], String(none));
});
