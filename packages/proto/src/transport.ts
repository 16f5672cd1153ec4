/**
 * Transport security of every Tessera gRPC connection (issue 5): mutual
 * TLS from PEM files (a CA, this process's certificate and key, e.g. made
 * by `tessera certs`), or plaintext, which is allowed only on loopback.
 *
 * A process is one role with one identity, so the security is set once
 * per process ({@link setTransportSecurity}) and used by every server this
 * process binds ({@link serverCredentials}) and every client it opens
 * ({@link channelCredentials}); a client may pass its own instead (a CLI
 * that talks to a coordinator with a CA and a bearer token only).
 * The default is plaintext, which refuses any address off loopback.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import * as grpc from "@grpc/grpc-js";

/** PEM file paths of a TLS identity. */
export interface TlsFiles {
  /** CA certificate(s) that peers' certificates must chain to. */
  ca: string;
  /** This process's certificate (chain); optional for a client that needs no identity. */
  cert?: string;
  /** The certificate's private key (PKCS#8 or PKCS#1 PEM). */
  key?: string;
}

/** How this process's gRPC connections are secured. */
export type TransportSecurity =
  | {
      readonly kind: "tls";
      readonly ca: Buffer;
      /** Absent for a client without an identity (server authentication only). */
      readonly cert?: Buffer;
      readonly key?: Buffer;
      /** Where it came from, for messages (the certificate file, or the CA's). */
      readonly source: string;
    }
  | { readonly kind: "plaintext" };

/** Plaintext: only to and on loopback addresses. */
export const PLAINTEXT: TransportSecurity = Object.freeze({ kind: "plaintext" });

let processSecurity: TransportSecurity = PLAINTEXT;

/** Sets the security of every server and client this process creates from now on. */
export function setTransportSecurity(security: TransportSecurity): void {
  processSecurity = security;
}

/** The security {@link setTransportSecurity} set (plaintext until then). */
export function transportSecurity(): TransportSecurity {
  return processSecurity;
}

/** A TLS set-up problem; the message names the file or the address. */
export class TransportSecurityError extends Error {
  override name = "TransportSecurityError";
}

function readPem(what: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new TransportSecurityError(`${what} ${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Reads and checks a TLS identity: the CA and certificate parse as X.509,
 * the certificate was issued by the CA, and the key is the certificate's.
 * Checked here so that a wrong file fails at start naming it, not at the
 * first handshake with an OpenSSL code.
 * @throws TransportSecurityError naming the file: unreadable, not PEM, a
 *   certificate the CA did not sign, a key that is not the certificate's,
 *   or a cert without a key (or the reverse).
 */
export function loadTls(files: TlsFiles): TransportSecurity {
  if ((files.cert === undefined) !== (files.key === undefined)) {
    throw new TransportSecurityError(
      files.cert === undefined
        ? `TLS key ${files.key} given without its certificate (--tls-cert)`
        : `TLS certificate ${files.cert} given without its key (--tls-key)`,
    );
  }
  const ca = readPem("TLS CA", files.ca);
  let caCerts: X509Certificate[];
  try {
    caCerts = splitPem(ca).map((pem) => new X509Certificate(pem));
    if (caCerts.length === 0) throw new Error("no PEM certificate in it");
  } catch (err) {
    throw new TransportSecurityError(`TLS CA ${files.ca}: not a PEM certificate: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (files.cert === undefined || files.key === undefined) return { kind: "tls", ca, source: files.ca };
  const cert = readPem("TLS certificate", files.cert);
  const key = readPem("TLS key", files.key);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (err) {
    throw new TransportSecurityError(
      `TLS certificate ${files.cert}: not a PEM certificate: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  checkChain(
    leaf,
    splitPem(cert)
      .slice(1)
      .map((pem) => new X509Certificate(pem)),
    caCerts,
    files,
  );
  try {
    if (!leaf.checkPrivateKey(createPrivateKey(key))) throw new Error("it is not this certificate's key");
  } catch (err) {
    throw new TransportSecurityError(`TLS key ${files.key}: ${(err as Error).message} (certificate ${files.cert})`, {
      cause: err,
    });
  }
  return { kind: "tls", ca, cert, key, source: files.cert };
}

/** "CN=x, O=y" of a certificate's subject. */
const subjectOf = (c: X509Certificate) => c.subject.replace(/\n/g, ", ");

/**
 * Checks that `leaf` chains to one of `cas`, through the intermediate
 * certificates that follow it in its file, and that every certificate on
 * the way is valid now.
 * @throws TransportSecurityError naming the file and the certificate.
 */
function checkChain(
  leaf: X509Certificate,
  intermediates: readonly X509Certificate[],
  cas: readonly X509Certificate[],
  files: TlsFiles,
): void {
  const now = Date.now();
  const signedBy = (c: X509Certificate, issuer: X509Certificate) => c.checkIssued(issuer) && c.verify(issuer.publicKey);
  let current = leaf;
  for (let depth = 0; ; depth++) {
    if (now < Date.parse(current.validFrom) || now > Date.parse(current.validTo)) {
      throw new TransportSecurityError(
        `TLS certificate ${files.cert}: ${subjectOf(current)} is valid from ${current.validFrom} to ${current.validTo}, not now`,
      );
    }
    if (cas.some((ca) => signedBy(current, ca))) return;
    const next = intermediates.find((i) => i !== current && signedBy(current, i));
    if (!next || depth >= 8) {
      throw new TransportSecurityError(
        `TLS certificate ${files.cert} (${subjectOf(leaf)}) was not issued by the CA in ${files.ca}` +
          (intermediates.length ? " (nor through the intermediate certificates after it)" : ""),
      );
    }
    current = next;
  }
}

/**
 * Channel options for a client of this process's own server dialled on
 * a loopback address (a coordinator's job worker, a node reading its own
 * Info): with TLS whose certificate does not name 127.0.0.1, the name the
 * server's certificate is checked against becomes the certificate's
 * first DNS name (its own certificate serves that server).
 */
export function selfChannelOptions(security: TransportSecurity = transportSecurity()): grpc.ChannelOptions {
  if (security.kind !== "tls" || !security.cert) return {};
  const own = new X509Certificate(security.cert);
  const sans = (own.subjectAltName ?? "").split(/,\s*/);
  if (sans.includes("IP Address:127.0.0.1")) return {};
  const dns = sans.find((n) => n.startsWith("DNS:") && !n.includes("*"))?.slice(4);
  const cn = /CN=([^\n,]+)/.exec(own.subject)?.[1];
  const name = dns ?? cn;
  return name ? { "grpc.ssl_target_name_override": name, "grpc.default_authority": name } : {};
}

function splitPem(pem: Buffer): string[] {
  return pem.toString("utf8").match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** True for "localhost", 127.0.0.0/8 and ::1 (brackets allowed). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (h === "localhost" || h === "::1") return true;
  return isIP(h) === 4 && h.startsWith("127.");
}

/** The host of "host:port" or "[v6]:port" (the whole string when there is no port). */
export function hostOf(address: string): string {
  const v6 = /^\[([^\]]*)\](?::\d+)?$/.exec(address);
  if (v6) return v6[1]!;
  const i = address.lastIndexOf(":");
  return i > 0 && address.indexOf(":") === i ? address.slice(0, i) : address;
}

/**
 * Server credentials for binding `host`: TLS with this identity, asking
 * every client for a certificate the CA signed when `requireClientCert`
 * (mutual TLS; a client without one fails the handshake), or plaintext.
 * @throws TransportSecurityError when plaintext is asked for a host off
 *   loopback, or TLS without a certificate and key.
 */
export function serverCredentials(
  security: TransportSecurity,
  host: string,
  requireClientCert = true,
): grpc.ServerCredentials {
  if (security.kind === "plaintext") {
    if (!isLoopbackHost(host)) {
      throw new TransportSecurityError(
        `plaintext gRPC on ${host} refused: plaintext is allowed on loopback only; give TLS files ` +
          "(--tls-ca, --tls-cert, --tls-key; `tessera certs` makes them for development)",
      );
    }
    return grpc.ServerCredentials.createInsecure();
  }
  if (!security.cert || !security.key) {
    throw new TransportSecurityError(`TLS server on ${host} needs a certificate and key (--tls-cert, --tls-key)`);
  }
  return grpc.ServerCredentials.createSsl(
    security.ca,
    [{ cert_chain: security.cert, private_key: security.key }],
    requireClientCert,
  );
}

/**
 * Channel credentials for a client of `address` (host:port): TLS checking
 * the server's certificate against the CA and its name against the host,
 * presenting this identity's certificate when it has one; or plaintext.
 * @throws TransportSecurityError when plaintext is asked for an address off loopback.
 */
export function channelCredentials(security: TransportSecurity, address: string): grpc.ChannelCredentials {
  if (security.kind === "plaintext") {
    if (!isLoopbackHost(hostOf(address))) {
      throw new TransportSecurityError(
        `plaintext gRPC to ${address} refused: plaintext is allowed on loopback only; give TLS files ` +
          "(--tls-ca, and --tls-cert/--tls-key where the server asks for a client certificate)",
      );
    }
    return grpc.credentials.createInsecure();
  }
  return grpc.credentials.createSsl(security.ca, security.key ?? null, security.cert ?? null);
}
