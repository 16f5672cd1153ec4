/**
 * The one set of validators every options compiler uses (coordinator,
 * gpu-, memory- and storage-node, generate limits): each applies the
 * default, checks the value and returns it, or throws a {@link ConfigError}
 * naming the option, with the same wording everywhere (Temporal's
 * `compileWorkerOptions` pattern: a loose user type in, a frozen validated
 * object out).
 */
import { ConfigError } from "./errors.js";
import { parseByteSize } from "./units.js";

/**
 * Milliseconds a service waits at shutdown for its running calls before it
 * forces them closed: the one default of every role's `shutdownGraceMs`
 * (and of `tessera run`'s local cluster).
 */
export const DEFAULT_SHUTDOWN_GRACE_MS = 5000;

/** Interface every service listens on unless told otherwise (loopback: plaintext is allowed there only). */
export const DEFAULT_HOST = "127.0.0.1";

const show = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : String(v));

/**
 * `value ?? dflt` when it is an integer >= 1.
 * @throws ConfigError(name) "must be a positive integer, got ..."
 */
export function positiveInt(name: string, value: number | undefined, dflt: number): number {
  const n = value ?? dflt;
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(name, `must be a positive integer, got ${show(value)}`);
  return n;
}

/**
 * `value ?? dflt` when it is an integer >= 0.
 * @throws ConfigError(name) "must be a non-negative integer, got ..."
 */
export function nonNegativeInt(name: string, value: number | undefined, dflt: number): number {
  const n = value ?? dflt;
  if (!Number.isInteger(n) || n < 0) throw new ConfigError(name, `must be a non-negative integer, got ${show(value)}`);
  return n;
}

/**
 * `value ?? dflt` when it is a finite number >= 0 (a price in $/h, a bandwidth in bytes/s).
 * @throws ConfigError(name) "must be a finite number >= 0, got ..."
 */
export function nonNegativeNumber(name: string, value: number | undefined, dflt: number): number {
  const n = value ?? dflt;
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0)
    throw new ConfigError(name, `must be a finite number >= 0, got ${show(value)}`);
  return n;
}

/**
 * `value ?? dflt` milliseconds, when finite and > 0.
 * @throws ConfigError(name) "must be a positive number of milliseconds, got ..."
 */
export function positiveMs(name: string, value: number | undefined, dflt: number): number {
  const n = value ?? dflt;
  if (typeof n !== "number" || !Number.isFinite(n) || n <= 0)
    throw new ConfigError(name, `must be a positive number of milliseconds, got ${show(value)}`);
  return n;
}

/**
 * A TCP port (a number or its decimal string), 0 meaning "pick a free one".
 * `range` is how the message writes [0, 65535] (the memory-node's tests pin
 * its older "0..65535").
 * @default `dflt` (0)
 * @throws ConfigError(name) "must be an integer in [0, 65535], got ..."
 */
export function portOption(
  value: number | string | undefined,
  name = "port",
  dflt = 0,
  range = "in [0, 65535]",
): number {
  const n = typeof value === "string" ? Number(value) : (value ?? dflt);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new ConfigError(name, `must be an integer ${range}, got ${show(value)}`);
  return n;
}

/**
 * `value ?? dflt` as bytes: a number of bytes or a size string ("64MiB",
 * "8G", parsed strictly by {@link parseByteSize}: no unknown unit, exponent
 * or fraction of a byte), at least `min`.
 * @throws ConfigError(name) `"lots" is not a size ...` or "must be at least N bytes, got M"
 */
export function byteSizeOption(name: string, value: number | string | undefined, dflt: number, min = 0): number {
  const n = parseByteSize(name, value ?? dflt);
  if (n < min) throw new ConfigError(name, `must be at least ${min} bytes, got ${n}`);
  return n;
}

/**
 * `value ?? dflt`: a host name or address to listen on.
 * @throws ConfigError(name) when empty or not a string.
 */
export function hostOption(value: string | undefined, name = "host", dflt: string = DEFAULT_HOST): string {
  const host = value ?? dflt;
  if (typeof host !== "string" || host.length === 0)
    throw new ConfigError(name, `must be a host name or address, got ${show(value)}`);
  return host;
}

/**
 * `value ?? dflt` when it is one of `choices`.
 * @throws ConfigError(name) `must be "a", "b" or "c", got "x"`
 */
export function oneOf<const T extends string>(
  name: string,
  value: string | undefined,
  choices: readonly T[],
  dflt: NoInfer<T>,
): T {
  const v = value ?? dflt;
  if ((choices as readonly string[]).includes(v)) return v as T;
  throw new ConfigError(name, `must be ${describeChoices(choices)}, got ${show(value)}`);
}

/** `"a", "b" or "c"`: how an error lists the accepted values. */
export function describeChoices(choices: readonly string[]): string {
  const quoted = choices.map((c) => JSON.stringify(c));
  return quoted.length <= 1 ? (quoted[0] ?? "") : `${quoted.slice(0, -1).join(", ")} or ${quoted[quoted.length - 1]}`;
}

/**
 * Whether `a` is host:port with a host of letters, digits, dots, dashes and
 * underscores and a port up to 65535 (no IPv6 literals, no unix: addresses;
 * control characters in a host make grpc-js resolve something else).
 */
export function isHostPort(a: string): boolean {
  const m = /^[A-Za-z0-9._-]+:(\d{1,5})$/.exec(a);
  return m !== null && Number(m[1]) <= 65535;
}
