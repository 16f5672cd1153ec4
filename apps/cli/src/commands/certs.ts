/**
 * `tessera certs` and `tessera token`: development credentials for mTLS
 * between Tessera's services and for the coordinator's bearer tokens.
 *
 * Certificates are made with @peculiar/x509 on Node's WebCrypto: ECDSA
 * P-256 keys (PKCS#8 PEM) and SHA-256 signatures, which Node's tls and
 * @grpc/grpc-js accept as they are.
 */
// @peculiar/x509 needs a Reflect metadata polyfill loaded before it (its README).
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { X509Certificate, createHash, createPrivateKey, randomBytes, webcrypto } from "node:crypto";
import { chmod, mkdir, readFile, stat, unlink, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { ALL_ROLES, ConfigError, certRoleOf, roleUri, type CertRole } from "@tessera/core";

x509.cryptoProvider.set(webcrypto);

/** What `tessera certs` makes. */
export interface CertsOptions {
  /** Folder to write into (created if missing). */
  out: string;
  /** Extra names of the cluster roles' certificates: IPs become IP SANs, others DNS SANs ("*.x" allowed). */
  hosts: string[];
  /** Validity of new certificates in days, integer 1..3650. */
  days: number;
  /** Make a new CA and overwrite existing files. */
  force: boolean;
  /** Print nothing on stderr. */
  quiet?: boolean;
}

/** CN of the development CA. */
export const CA_NAME = "Tessera development CA";
/** Names always in the certificates of the cluster roles. */
export const DEFAULT_HOSTS = ["localhost", "127.0.0.1", "::1"] as const;
const TENANT = /^[A-Za-z0-9_.-]{1,64}$/;
const DNS_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const EC: webcrypto.EcKeyGenParams & webcrypto.EcdsaParams = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
// Leaf certificates start this long ago, for clocks a little behind.
const SKEW_MS = 5 * 60_000;
const DAY_MS = 86_400_000;

/** One leaf certificate: its file name (without .pem), subject CN and role; `serves`: a server's (host SANs, serverAuth). */
interface Leaf {
  file: string;
  cn: string;
  role: CertRole;
  serves: boolean;
}

/**
 * `tessera certs`: makes the files of {@link makeCertificates} and prints
 * each one written on stderr (unless quiet). Resolves exit code 0.
 * @throws ConfigError on a bad option; Error naming a file that exists or cannot be read or written.
 */
export async function certsCommand(o: CertsOptions): Promise<number> {
  const { written } = await makeCertificates(o);
  if (!o.quiet) {
    for (const f of written) process.stderr.write(`wrote ${f}\n`);
  }
  return 0;
}

/**
 * Writes into `o.out`:
 * - ca.pem + ca-key.pem: a local CA, CN "Tessera development CA";
 * - one certificate per cluster role, `<role>.pem` + `<role>-key.pem` for
 *   coordinator, gpu-node, memory-node and storage-node: serverAuth +
 *   clientAuth, CN "tessera-<role>", SANs localhost, 127.0.0.1, ::1, every
 *   `hosts` entry and the role URI (`spiffe://tessera/role/<role>`);
 * - client.pem + client-key.pem: clientAuth only, CN "tessera-client",
 *   role URI `spiffe://tessera/role/operator` (an operator's identity).
 *
 * Every RPC checks its caller's role (packages/rpc caller-roles.ts): the
 * operator may read a node's Info but not Load a gpu-node; tenants get
 * bearer tokens (`tessera token`), not certificates. No node.pem is made
 * any more: a certificate without a role URI is refused by every RPC.
 *
 * An existing ca.pem + ca-key.pem pair is reused (new leaves signed by it)
 * unless `force`; leaf certificates then end no later than the CA. Existing
 * leaf files are refused unless `force`; nothing is written when one is.
 * Key files are PKCS#8 PEM, mode 0600. Resolves the paths written.
 * @throws ConfigError naming a bad host or days; Error naming an
 *   existing leaf file, an unreadable or mismatched CA file, or an expired CA.
 */
export async function makeCertificates(o: CertsOptions): Promise<{ written: string[] }> {
  if (!Number.isInteger(o.days) || o.days < 1 || o.days > 3650)
    throw new ConfigError("--days", `must be an integer in [1, 3650], got ${o.days}`);
  const hosts = [...new Set([...DEFAULT_HOSTS, ...o.hosts.map(checkHost)])];

  const path = (f: string) => join(o.out, f);
  const leaves: Leaf[] = [
    ...ALL_ROLES.map((r) => {
      const role = certRoleOf(r);
      return { file: role, cn: `tessera-${role}`, role, serves: true };
    }),
    { file: "client", cn: "tessera-client", role: "operator", serves: false },
  ];
  await mkdir(o.out, { recursive: true });
  if (!o.force) {
    for (const l of leaves)
      for (const f of [`${l.file}.pem`, `${l.file}-key.pem`])
        if (await exists(path(f)))
          throw new Error(`${path(f)} exists (pass --force to overwrite it and make a new CA)`);
  }

  const written: string[] = [];
  const now = Date.now();
  let notAfter = new Date(now + o.days * DAY_MS);
  let ca: { cert: x509.X509Certificate; key: webcrypto.CryptoKey };
  const reuse = !o.force && (await existingCa(path("ca.pem"), path("ca-key.pem")));
  if (reuse) {
    ca = reuse;
    if (ca.cert.notAfter.getTime() <= now)
      throw new Error(`${path("ca.pem")}: the CA expired on ${ca.cert.notAfter.toISOString()} (pass --force)`);
    if (ca.cert.notAfter < notAfter) notAfter = ca.cert.notAfter;
  } else {
    const keys = await webcrypto.subtle.generateKey(EC, true, ["sign", "verify"]);
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: [{ CN: [CA_NAME] }],
      notBefore: new Date(now - SKEW_MS),
      notAfter,
      signingAlgorithm: EC,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    await writePem(path("ca-key.pem"), await pkcs8Pem(keys.privateKey), true, written);
    await writePem(path("ca.pem"), cert.toString("pem"), false, written);
    ca = { cert, key: keys.privateKey };
  }

  const sans: x509.JsonGeneralName[] = hosts.map((h) => ({ type: isIP(h) ? "ip" : "dns", value: h }));
  const authority = await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey);
  for (const l of leaves) {
    const keys = await webcrypto.subtle.generateKey(EC, true, ["sign", "verify"]);
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: [{ CN: [l.cn] }],
      issuer: ca.cert.subject,
      notBefore: new Date(now - SKEW_MS),
      notAfter,
      signingAlgorithm: EC,
      publicKey: keys.publicKey,
      signingKey: ca.key,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension(
          l.serves
            ? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]
            : [x509.ExtendedKeyUsage.clientAuth],
          false,
        ),
        new x509.SubjectAlternativeNameExtension(
          [...(l.serves ? sans : []), { type: "url", value: roleUri(l.role) }],
          false,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        authority,
      ],
    });
    await writePem(path(`${l.file}-key.pem`), await pkcs8Pem(keys.privateKey), true, written);
    await writePem(path(`${l.file}.pem`), cert.toString("pem"), false, written);
  }
  return { written };
}

/**
 * `tessera token --tenant NAME [--admin]`: prints a new bearer token (32
 * random bytes, base64url) on stdout and, on stderr, its entry for the
 * coordinator's --tokens file:
 * `- { tenant: "NAME", sha256: <hex of sha256(token as UTF-8)>, admin: true|false }`.
 * Returns exit code 0.
 * @throws ConfigError naming a bad tenant name.
 */
export function tokenCommand(o: { tenant: string; admin: boolean }): number {
  checkTenant(o.tenant);
  const token = randomBytes(32).toString("base64url");
  const sha256 = createHash("sha256").update(token, "utf8").digest("hex");
  process.stdout.write(`${token}\n`);
  process.stderr.write(`- { tenant: ${JSON.stringify(o.tenant)}, sha256: ${sha256}, admin: ${o.admin} }\n`);
  return 0;
}

/** @throws ConfigError unless `name` is 1..64 of letters, digits, "_", "." and "-". */
function checkTenant(name: string): void {
  if (!TENANT.test(name))
    throw new ConfigError("--tenant", `${JSON.stringify(name)} is not 1..64 letters, digits, "_", "." or "-"`);
}

/** `h` if it is an IP address or a DNS name (a leading "*." allowed); IPv6 "[::1]" loses its brackets. */
function checkHost(h: string): string {
  const bare = /^\[(.*)\]$/.exec(h)?.[1] ?? h;
  if (isIP(bare)) return bare;
  const name = bare.startsWith("*.") ? bare.slice(2) : bare;
  const labels = name.replace(/\.$/, "").split(".");
  if (name.length > 253 || !labels.every((l) => DNS_LABEL.test(l)) || /^\d+$/.test(labels.at(-1) ?? ""))
    throw new ConfigError("--host", `${JSON.stringify(h)} is neither an IP address nor a DNS name`);
  return bare;
}

/** A positive 128-bit serial number in hex (RFC 5280: at most 20 octets, positive). */
function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x40;
  return b.toString("hex");
}

/** `key` as PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"). */
async function pkcs8Pem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  return createPrivateKey({ key: der, format: "der", type: "pkcs8" }).export({
    format: "pem",
    type: "pkcs8",
  }) as string;
}

/**
 * The CA in `certFile` + `keyFile`, or undefined when neither exists.
 * @throws Error naming the file when only one exists, one cannot be parsed,
 *   the key is not ECDSA P-256, or the key is not the certificate's.
 */
async function existingCa(
  certFile: string,
  keyFile: string,
): Promise<{ cert: x509.X509Certificate; key: webcrypto.CryptoKey } | undefined> {
  const [hasCert, hasKey] = await Promise.all([exists(certFile), exists(keyFile)]);
  if (!hasCert && !hasKey) return undefined;
  if (!hasCert || !hasKey)
    throw new Error(`${hasCert ? keyFile : certFile} is missing beside ${hasCert ? certFile : keyFile} (pass --force)`);
  const certPem = await readFile(certFile, "utf8");
  const keyPem = await readFile(keyFile, "utf8");
  let nodeCert: X509Certificate;
  try {
    nodeCert = new X509Certificate(certPem);
  } catch (err) {
    throw new Error(`${certFile}: not a PEM certificate (${(err as Error).message})`);
  }
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new Error(`${keyFile}: not a PEM private key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1")
    throw new Error(`${keyFile}: not an ECDSA P-256 key (pass --force to make a new CA)`);
  if (!nodeCert.checkPrivateKey(key)) throw new Error(`${keyFile} is not the key of ${certFile}`);
  if (!nodeCert.ca) throw new Error(`${certFile} is not a CA certificate`);
  const der = key.export({ format: "der", type: "pkcs8" });
  return {
    cert: new x509.X509Certificate(certPem),
    key: await webcrypto.subtle.importKey("pkcs8", der, EC, false, ["sign"]),
  };
}

/** Writes `text` to `file` (mode 0600 when `secret`, else 0644), replacing one that exists; adds `file` to `written`. */
async function writePem(file: string, text: string, secret: boolean, written: string[]): Promise<void> {
  const mode = secret ? 0o600 : 0o644;
  // Replace rather than overwrite, so that an existing file's wider mode is not kept.
  await unlink(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "ENOENT") throw new Error(`${file}: ${err.message}`);
  });
  try {
    await writeFile(file, text, { mode, flag: "wx" });
    await chmod(file, mode); // the umask may have narrowed 0644; keys stay 0600 whatever it is
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
  written.push(file);
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    (err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return false;
      throw new Error(`${file}: ${err.message}`);
    },
  );
}
