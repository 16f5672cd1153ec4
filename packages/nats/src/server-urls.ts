/**
 * Credentials in NATS server URLs (issue 13): `nats://user:password@host:4222`
 * or `nats://token@host:4222` (the forms nats-server's own clients accept),
 * with or without the scheme. nats.js would drop the userinfo silently (and
 * read a numeric password as the port); Tessera takes it out of the URL and
 * uses it as the connection's credentials, and never prints it:
 * {@link redactNatsServers} is what every message and log line shows.
 */
import { ConfigError } from "@tessera/core";

/** How a URL's userinfo authenticates: user and password, or a token. */
export type NatsUrlAuth =
  { kind: "none" } | { kind: "user"; user: string; password: string } | { kind: "token"; token: string };

/** The servers of a `--nats` value with their userinfo taken out, and the credentials it carried. */
export interface NatsServerCredentials {
  /** Each server without userinfo, e.g. ["nats://h:4222", "h2:4222"]. */
  servers: string[];
  /** The credentials the userinfo carried ({ kind: "none" } when no entry had any). */
  auth: NatsUrlAuth;
}

/** What a redacted userinfo reads as. */
const REDACTED = "***";

/** One server entry split into scheme, userinfo (undefined when none) and host part. */
function splitEntry(entry: string): { scheme: string; userinfo: string | undefined; host: string } {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(entry)?.[0] ?? "";
  const rest = entry.slice(scheme.length);
  const at = rest.lastIndexOf("@");
  if (at < 0 || rest.slice(0, at).includes("/")) return { scheme, userinfo: undefined, host: rest };
  return { scheme, userinfo: rest.slice(0, at), host: rest.slice(at + 1) };
}

/**
 * `servers` (comma-separated) with every entry's userinfo replaced by
 * "***": "nats://u:p@h:4222,h2:4222" -> "nats://***@h:4222,h2:4222". For
 * messages and logs; never throws.
 */
export function redactNatsServers(servers: string): string {
  return servers
    .split(",")
    .map((raw) => {
      const entry = raw.trim();
      const { scheme, userinfo, host } = splitEntry(entry);
      return userinfo === undefined ? entry : `${scheme}${REDACTED}@${host}`;
    })
    .filter((e) => e !== "")
    .join(",");
}

/** `s` percent-decoded. @throws ConfigError naming `flag` (not the text) when it is not valid percent-encoding. */
function decoded(s: string, flag: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new ConfigError(flag, "the credentials in a server URL are not valid percent-encoding");
  }
}

/** The credentials of one userinfo: "user:password" (percent-decoded) or "token". */
function authOf(userinfo: string, flag: string): NatsUrlAuth {
  const colon = userinfo.indexOf(":");
  if (colon < 0) {
    if (userinfo === "") throw new ConfigError(flag, 'a server URL has an empty token before "@"');
    return { kind: "token", token: decoded(userinfo, flag) };
  }
  const user = decoded(userinfo.slice(0, colon), flag);
  const password = decoded(userinfo.slice(colon + 1), flag);
  if (user === "") throw new ConfigError(flag, 'a server URL has a password but no user before ":"');
  if (password === "") throw new ConfigError(flag, `a server URL has user ${JSON.stringify(user)} but no password`);
  return { kind: "user", user, password };
}

/** Whether two URL credentials are the same. */
function sameAuth(a: NatsUrlAuth, b: NatsUrlAuth): boolean {
  if (a.kind === "user" && b.kind === "user") return a.user === b.user && a.password === b.password;
  if (a.kind === "token" && b.kind === "token") return a.token === b.token;
  return a.kind === b.kind;
}

/**
 * Splits comma-separated NATS servers into servers without userinfo and the
 * credentials the userinfo carried. Entries without userinfo are fine beside
 * ones with it (one connection has one set of credentials).
 * @param flag the flag or option the servers came from, for errors. @default "--nats"
 * @throws ConfigError naming `flag`, never the credentials: entries carry
 *   different credentials, a user without a password (or the reverse), an
 *   empty token, bad percent-encoding.
 */
export function natsServerCredentials(servers: string, flag = "--nats"): NatsServerCredentials {
  const out: string[] = [];
  let auth: NatsUrlAuth = { kind: "none" };
  for (const raw of servers.split(",")) {
    const entry = raw.trim();
    if (entry === "") continue;
    const { scheme, userinfo, host } = splitEntry(entry);
    out.push(`${scheme}${host}`);
    if (userinfo === undefined) continue;
    const these = authOf(userinfo, flag);
    if (auth.kind !== "none" && !sameAuth(auth, these)) {
      throw new ConfigError(flag, "the server URLs carry different credentials (give one set)");
    }
    auth = these;
  }
  return { servers: out, auth };
}
