/**
 * Who calls the coordinator (issue 5, security): bearer tokens mapped to
 * tenants, read from a tokens file, and the rules that keep tenants apart.
 *
 * The tokens file (YAML or JSON) lists entries
 * `{ tenant, sha256 | token, admin? }`: `sha256` is the hex SHA-256 of the
 * token's UTF-8 bytes (what `tessera token` prints; the file then holds no
 * secret), `token` the token itself. A caller sends
 * `authorization: Bearer <token>` metadata. A tenant sees, reads and
 * cancels only its own jobs; an admin entry sees every job and may add and
 * remove nodes. Without a tokens file every caller is an admin: the
 * transport is then the only gate (mutual TLS, or plaintext on loopback
 * asked for explicitly).
 */
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { YAMLError, parse as parseYaml } from "yaml";
import { z } from "zod";
import { ConfigError } from "@tessera/core";
import { Code, RpcError, type Metadata } from "@tessera/proto";

/** An authenticated caller. */
export interface Identity {
  /** The tenant a token belongs to; undefined for an admin without one, or when there are no tokens. */
  readonly tenant: string | undefined;
  /** May see every tenant's jobs and add or remove nodes. */
  readonly admin: boolean;
}

const TENANT = /^[A-Za-z0-9_.-]{1,64}$/;

const entrySchema = z
  .object({
    tenant: z.string().regex(TENANT, "letters, digits, '_', '.' or '-', 1 to 64 of them"),
    sha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, "64 hex digits (SHA-256 of the token)")
      .optional(),
    token: z.string().min(16, "at least 16 characters").optional(),
    admin: z.boolean().default(false),
  })
  .strict()
  .refine((e) => (e.sha256 === undefined) !== (e.token === undefined), "give exactly one of sha256 and token");
const fileSchema = z.object({ tokens: z.array(entrySchema).min(1, "at least one entry") }).strict();

/** A tokens file entry once read: the token's SHA-256 (hex, lower case) and who it is. */
export interface TokenEntry extends Identity {
  readonly sha256: string;
}

/** Hex SHA-256 of a token's UTF-8 bytes, as the tokens file stores it. */
export function tokenDigest(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/**
 * Reads a tokens file (YAML or JSON: `tokens: [{ tenant, sha256 | token, admin? }]`).
 * @throws ConfigError naming the file, and the entry and field, when it
 *   cannot be read, is not YAML, or an entry is invalid or repeats a token.
 */
export function loadTokens(file: string): TokenEntry[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError("tokensFile", `${file}: cannot read: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    // Where, not what: the yaml library's message quotes the line, and that line may hold a token.
    throw new ConfigError("tokensFile", `${file}: not YAML or JSON: ${yamlErrorWhere(err)}`);
  }
  const parsed = fileSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length ? issue.path.join(".") : "(top level)";
    throw new ConfigError("tokensFile", `${file}: ${where}: ${issue.message}`);
  }
  const seen = new Set<string>();
  return parsed.data.tokens.map((e, i) => {
    const sha256 = (e.sha256 ?? tokenDigest(e.token!)).toLowerCase();
    if (seen.has(sha256))
      throw new ConfigError("tokensFile", `${file}: tokens.${i}: the same token as an earlier entry`);
    seen.add(sha256);
    return { tenant: e.tenant, admin: e.admin, sha256 };
  });
}

/** A YAML parse error as its code and position ("BAD_INDENT at line 3, column 5"), never the text it quotes. */
function yamlErrorWhere(err: unknown): string {
  if (!(err instanceof YAMLError)) return "cannot be parsed";
  const at = err.linePos?.[0];
  return at === undefined ? err.code : `${err.code} at line ${at.line}, column ${at.col}`;
}

const ADMIN: Identity = Object.freeze({ tenant: undefined, admin: true });

/**
 * Turns a call's metadata into an {@link Identity}. It also holds a
 * random internal token (an admin), never written anywhere, for a part of
 * this process that must call its own coordinator over gRPC (the job worker
 * no longer does: it runs Generate in-process).
 */
export class Authenticator {
  private readonly byDigest: Map<string, Identity> | undefined;
  /** The process's own token: an admin, never written anywhere. */
  readonly internalToken = randomBytes(32).toString("base64url");

  /** `entries` undefined: no tokens, every caller is an admin. */
  constructor(entries: readonly TokenEntry[] | undefined) {
    if (entries === undefined) {
      this.byDigest = undefined;
      return;
    }
    this.byDigest = new Map(entries.map((e) => [e.sha256, { tenant: e.tenant, admin: e.admin }]));
    this.byDigest.set(tokenDigest(this.internalToken), ADMIN);
  }

  /** Whether callers must send a token (a tokens file was given). */
  get requiresToken(): boolean {
    return this.byDigest !== undefined;
  }

  /**
   * The caller of a call with `metadata`.
   * @throws RpcError UNAUTHENTICATED when tokens are required and the call
   *   has no `authorization: Bearer` metadata or an unknown token.
   */
  identify(metadata: Metadata): Identity {
    return this.identifyHeader(metadata.get("authorization")[0]);
  }

  /**
   * The caller whose `Authorization` header (gRPC metadata or HTTP) is `header`.
   * @throws RpcError UNAUTHENTICATED as {@link identify}.
   */
  identifyHeader(header: unknown): Identity {
    if (!this.byDigest) return ADMIN;
    const m = typeof header === "string" ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      throw new RpcError(
        Code.UNAUTHENTICATED,
        "no bearer token: this coordinator needs `authorization: Bearer <token>` (tessera --token, TESSERA_TOKEN)",
      );
    }
    const who = this.byDigest.get(tokenDigest(m[1]!));
    if (!who) throw new RpcError(Code.UNAUTHENTICATED, "unknown bearer token");
    return who;
  }
}

/** @throws RpcError PERMISSION_DENIED naming `what` unless `who` is an admin. */
export function requireAdmin(who: Identity, what: string): void {
  if (!who.admin) {
    throw new RpcError(Code.PERMISSION_DENIED, `${what}: tenant ${who.tenant} may not; it needs an admin token`);
  }
}

/**
 * Refuses priority "high" (the `priority` field of Generate and SubmitJob)
 * to a tenant: only admins may put work ahead of every tenant's.
 * @throws RpcError PERMISSION_DENIED naming the field.
 */
export function checkPriorityAllowed(who: Identity, priority: string): void {
  if (!who.admin && priority === "high") {
    throw new RpcError(Code.PERMISSION_DENIED, `priority: "high" needs an admin token (tenant ${who.tenant})`);
  }
}

/**
 * Whether `who` may see a job owned by `tenant`: admins see all, a tenant
 * only its own (a job of another tenant is answered NOT_FOUND, so its
 * existence does not leak).
 */
export function maySee(who: Identity, tenant: string | undefined): boolean {
  return who.admin || (who.tenant !== undefined && who.tenant === tenant);
}

/**
 * The tenant a job submitted by `who` belongs to: a tenant's own (asking
 * for another is refused); an admin's choice (`requested`, may be empty).
 * @throws RpcError PERMISSION_DENIED when a tenant asks to submit as another.
 */
export function submitTenant(who: Identity, requested: string): string | undefined {
  if (who.admin) return requested || who.tenant;
  if (requested && requested !== who.tenant) {
    throw new RpcError(
      Code.PERMISSION_DENIED,
      `tenant: ${JSON.stringify(requested)} is not yours (your token is tenant ${JSON.stringify(who.tenant)})`,
    );
  }
  return who.tenant;
}

/** The metadata of a server call, unary or streaming. */
interface WithMetadata {
  readonly metadata: Metadata;
}

/**
 * `impl` with every method first authenticating its caller
 * ({@link Authenticator.identify}); unauthenticated calls end
 * UNAUTHENTICATED before the method runs. Methods that need the caller
 * (tenant checks) call `identify` again on the same call.
 */
export function authenticated<T extends object>(impl: T, auth: Authenticator): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(impl) as [string, (...args: unknown[]) => Promise<unknown>][]) {
    out[name] = async (...args: unknown[]) => {
      // Unary methods get (request, call); streaming ones (call).
      const call = (args.length > 1 ? args[1] : args[0]) as WithMetadata;
      auth.identify(call.metadata);
      return fn(...args);
    };
  }
  return out as T;
}
