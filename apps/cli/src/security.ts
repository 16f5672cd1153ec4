/**
 * The CLI's side of transport security (issue 5): every command that
 * serves or calls gRPC must be told TLS files (`--tls-ca`, `--tls-cert`,
 * `--tls-key`; `tessera certs` makes them) or `--plaintext`, which then
 * works on loopback only. Nothing is plaintext by default.
 */
import { X509Certificate } from "node:crypto";
import { ConfigError, ROLE_URI_PREFIX, roleUri, rolesOfSubjectAltName, type CertRole } from "@tessera/core";
import {
  PLAINTEXT,
  TransportSecurityError,
  loadTls,
  setTransportSecurity,
  type TransportSecurity,
} from "@tessera/proto";
import {
  natsAuthFromFlags,
  natsServerCredentials,
  natsTlsFromFlags,
  setNatsAuth,
  setNatsTls,
  type NatsAuthFlags,
  type NatsTlsFlags,
} from "@tessera/nats";

/** The transport flags of a command. */
export interface TransportFlags {
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  plaintext?: boolean;
}

/**
 * The transport security the flags ask for.
 * @param who what needs it, for messages ("a memory-node", "this client").
 * @param identity whether a certificate and key are required (a server,
 *   or any node: nodes ask each other for client certificates).
 * @throws Error naming the flags: neither TLS nor --plaintext, both, or a
 *   certificate missing where one is required; TransportSecurityError
 *   naming the file when a TLS file is unreadable or does not match.
 */
export function transportOf(flags: TransportFlags, who: string, identity: boolean): TransportSecurity {
  const tls = flags.tlsCa !== undefined || flags.tlsCert !== undefined || flags.tlsKey !== undefined;
  if (flags.plaintext && tls) throw new Error(`${who}: give TLS files or --plaintext, not both`);
  if (flags.plaintext) return PLAINTEXT;
  if (!tls) {
    throw new Error(
      `${who}: no transport security: give --tls-ca, --tls-cert and --tls-key (TESSERA_TLS_CA, ` +
        "TESSERA_TLS_CERT, TESSERA_TLS_KEY; `tessera certs` makes them for development), or --plaintext " +
        "(loopback addresses only)",
    );
  }
  if (flags.tlsCa === undefined) throw new Error(`${who}: --tls-ca is needed with --tls-cert/--tls-key`);
  if (identity && (flags.tlsCert === undefined || flags.tlsKey === undefined)) {
    throw new Error(`${who}: --tls-cert and --tls-key are needed (its certificate and key)`);
  }
  return loadTls({
    ca: flags.tlsCa,
    ...(flags.tlsCert !== undefined ? { cert: flags.tlsCert } : {}),
    ...(flags.tlsKey !== undefined ? { key: flags.tlsKey } : {}),
  });
}

/**
 * Sets this process's transport security from its flags (every server and
 * client it opens uses it). With `role` (a coordinator's or node's), a TLS
 * certificate must carry that role's SAN URI: the nodes it calls check it
 * on every RPC, so a wrong one would fail each call, not the start.
 * Throws as {@link transportOf}, and TransportSecurityError naming the
 * certificate file and the roles it has when `role` is not among them.
 */
export function applyTransport(
  flags: TransportFlags,
  who: string,
  identity: boolean,
  role?: CertRole,
): TransportSecurity {
  const security = transportOf(flags, who, identity);
  if (role !== undefined && security.kind === "tls" && security.cert) {
    const roles = rolesOfSubjectAltName(new X509Certificate(security.cert).subjectAltName);
    if (!roles.includes(role)) {
      const has = roles.length ? `has role ${roles.join(", ")}` : `carries no Tessera role (${ROLE_URI_PREFIX}<role>)`;
      throw new TransportSecurityError(
        `${who}: TLS certificate ${flags.tlsCert} ${has}, not ${role} (SAN URI ${roleUri(role)}; ` +
          `\`tessera certs\` writes ${role}.pem)`,
      );
    }
  }
  setTransportSecurity(security);
  return security;
}

/**
 * Sets how this process authenticates to NATS (user and password, token,
 * NKEY seed or .creds file) and its NATS TLS, from its flags; every NATS
 * connection it opens uses them. Credentials in the `--nats` URLs
 * ("nats://user:password@host:4222", "nats://token@host:4222") are taken
 * out of `flags.nats` (which is rewritten without them, so that no message
 * or log line that names the servers shows them) and used as the process's
 * credentials.
 * @throws ConfigError naming the flag, never a secret: conflicting kinds
 *   (the URL's credentials and a --nats-* one included), a user without a
 *   password, an unreadable or malformed file.
 */
export function applyNatsAuth(flags: NatsAuthFlags & NatsTlsFlags & { nats?: string }): void {
  let auth = natsAuthFromFlags(flags);
  if (flags.nats !== undefined) {
    const fromUrl = natsServerCredentials(flags.nats, "--nats");
    if (fromUrl.auth.kind !== "none") {
      if (auth.kind !== "none") {
        throw new ConfigError(
          "--nats",
          "credentials in a server URL cannot be combined with --nats-user/--nats-password/--nats-token/" +
            "--nats-nkey/--nats-creds (give one)",
        );
      }
      auth = fromUrl.auth;
    }
    flags.nats = fromUrl.servers.join(",");
  }
  setNatsAuth(auth);
  setNatsTls(natsTlsFromFlags(flags));
}
