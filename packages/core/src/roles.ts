/**
 * The roles of a Tessera cluster, declared once. Every other place that
 * needs a role's name, gRPC service, default port or CLI word reads it from
 * {@link ROLES}; adding a role is one entry here plus the role's own folder
 * (`services/<role>`).
 */

/** What one role is: its wire service, default port and how the CLI names it. */
export interface RoleSpec {
  /** Fully qualified gRPC service the role serves, e.g. "tessera.v1.GpuNode". */
  readonly service: string;
  /** Default gRPC port (also helm/tessera's container port). */
  readonly defaultPort: number;
  /** The word after `tessera` (coordinator) or `tessera node` (nodes) that starts it. */
  readonly cli: string;
  /** Human name used in logs and errors, e.g. "memory-node". */
  readonly label: string;
  /** Holds KV caches and answers Attend (the Attention service). */
  readonly attention: boolean;
}

/** Every role, in pipeline order: coordinator, gpu-node, memory-node, storage-node. */
export const ROLES = {
  coordinator: {
    service: "tessera.v1.Coordinator",
    defaultPort: 7300,
    cli: "coordinator",
    label: "coordinator",
    attention: false,
  },
  gpu: { service: "tessera.v1.GpuNode", defaultPort: 7301, cli: "gpu", label: "gpu-node", attention: false },
  memory: { service: "tessera.v1.Attention", defaultPort: 7302, cli: "memory", label: "memory-node", attention: true },
  storage: {
    service: "tessera.v1.Attention",
    defaultPort: 7303,
    cli: "storage",
    label: "storage-node",
    attention: true,
  },
} as const satisfies Record<string, RoleSpec>;

/** Any role of a cluster. */
export type Role = keyof typeof ROLES;
/** A node the coordinator drives: every role but the coordinator. */
export type NodeRole = Exclude<Role, "coordinator">;
/** A node that holds KV caches and serves the Attention service. */
export type AttentionRole = {
  [R in Role]: (typeof ROLES)[R]["attention"] extends true ? R : never;
}[Role];

/** Every role name, in {@link ROLES} order. */
export const ALL_ROLES = Object.keys(ROLES) as Role[];
/** Every node role, in {@link ROLES} order. */
export const NODE_ROLES = ALL_ROLES.filter((r): r is NodeRole => r !== "coordinator");
/** The attention roles, in {@link ROLES} order. */
export const ATTENTION_ROLES = ALL_ROLES.filter((r): r is AttentionRole => ROLES[r].attention);

/** True when `value` names a role. */
export function isRole(value: string): value is Role {
  return Object.hasOwn(ROLES, value);
}

/** True when `value` names a node role (not the coordinator). */
export function isNodeRole(value: string): value is NodeRole {
  return isRole(value) && value !== "coordinator";
}

/** True when `value` names an attention role (memory or storage). */
export function isAttentionRole(value: string): value is AttentionRole {
  return isRole(value) && ROLES[value].attention;
}

/** "memory-node 127.0.0.1:7302": how logs and errors name a node. */
export function nodeName(role: Role, address: string): string {
  return `${ROLES[role].label} ${address}`;
}

// ---- Certificate identities (issue 13) ------------------------------------

/**
 * Who a mutual-TLS caller is, as its certificate says: a cluster role's
 * label ("coordinator", "gpu-node", "memory-node", "storage-node") or
 * "operator" (a person's client certificate, client.pem). Each RPC's
 * callers are checked against these (packages/rpc caller-roles.ts).
 */
export type CertRole = (typeof ROLES)[Role]["label"] | "operator";

/** Every certificate role: the cluster roles in {@link ROLES} order, then "operator". */
export const CERT_ROLES: readonly CertRole[] = [...ALL_ROLES.map((r) => ROLES[r].label), "operator"];

/**
 * A certificate carries its role as this SAN URI followed by the role, e.g.
 * "spiffe://tessera/role/gpu-node" (a SPIFFE ID in trust domain "tessera").
 */
export const ROLE_URI_PREFIX = "spiffe://tessera/role/";

/** The SAN URI of `role`, e.g. "spiffe://tessera/role/coordinator". */
export function roleUri(role: CertRole): string {
  return `${ROLE_URI_PREFIX}${role}`;
}

/** The certificate role of a cluster role: its label ("gpu" → "gpu-node"). */
export function certRoleOf(role: Role): CertRole {
  return ROLES[role].label;
}

/** True when `value` names a certificate role. */
export function isCertRole(value: string): value is CertRole {
  return (CERT_ROLES as readonly string[]).includes(value);
}

/**
 * The Tessera roles a certificate's subjectAltName carries (Node's
 * `subjectaltname` form: "DNS:localhost, IP Address:127.0.0.1,
 * URI:spiffe://tessera/role/gpu-node", entries split by ", "; Node quotes
 * a name holding a comma or quote JSON-style, so `DNS:"a, URI:..."` is one
 * DNS name, never a URI). URIs under {@link ROLE_URI_PREFIX} naming no role
 * are left out; a malformed rest of the string is ignored.
 */
export function rolesOfSubjectAltName(subjectAltName: string | undefined): CertRole[] {
  const roles: CertRole[] = [];
  for (const [type, uri] of sanEntries(subjectAltName ?? "")) {
    const role = type === "URI" && uri.startsWith(ROLE_URI_PREFIX) ? uri.slice(ROLE_URI_PREFIX.length) : "";
    if (isCertRole(role) && !roles.includes(role)) roles.push(role);
  }
  return roles;
}

/** The [type, value] entries of a subjectAltName string, quoted values unquoted; stops at the first malformed one. */
function sanEntries(s: string): [string, string][] {
  const out: [string, string][] = [];
  let i = 0;
  while (i < s.length) {
    const colon = s.indexOf(":", i);
    if (colon < 0) break;
    const type = s.slice(i, colon);
    let j = colon + 1;
    let value: string;
    if (s[j] === '"') {
      let k = j + 1;
      while (k < s.length && s[k] !== '"') k += s[k] === "\\" ? 2 : 1;
      try {
        value = JSON.parse(s.slice(j, k + 1)) as string;
      } catch {
        break;
      }
      j = k + 1;
    } else {
      const end = s.indexOf(", ", j);
      j = end < 0 ? s.length : end;
      value = s.slice(colon + 1, j);
    }
    out.push([type, value]);
    if (j === s.length) break;
    if (!s.startsWith(", ", j)) break;
    i = j + 2;
  }
  return out;
}
