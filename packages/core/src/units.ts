import bytes from "bytes";
import { ConfigError } from "./errors.js";

/**
 * What a size is multiplied by, per unit, lower-cased: decimal units are
 * powers of 1000 and binary ones powers of 1024, as in Kubernetes quantities
 * ("8G" = 8e9 B, "512Mi" = 512·2^20 B).
 */
const SIZE_UNITS: Readonly<Record<string, bigint>> = Object.freeze({
  "": 1n,
  b: 1n,
  k: 1000n,
  kb: 1000n,
  m: 1000n ** 2n,
  mb: 1000n ** 2n,
  g: 1000n ** 3n,
  gb: 1000n ** 3n,
  t: 1000n ** 4n,
  tb: 1000n ** 4n,
  ki: 1024n,
  kib: 1024n,
  mi: 1024n ** 2n,
  mib: 1024n ** 2n,
  gi: 1024n ** 3n,
  gib: 1024n ** 3n,
  ti: 1024n ** 4n,
  tib: 1024n ** 4n,
});

/** The forms a size option takes, as its error message lists them. */
const SIZE_FORMS =
  "a whole number of bytes, or a number with a unit: B, K/KB, M/MB, G/GB, T/TB (powers of 1000) " +
  "or Ki/KiB, Mi/MiB, Gi/GiB, Ti/TiB (powers of 1024), e.g. 64MiB, 8G, 1.5GiB";

/**
 * Parses a size option into bytes, strictly: a non-negative integer (bytes),
 * or an integer or decimal number (digits on both sides of the point) with a
 * unit of {@link SIZE_UNITS}, case-insensitive, optionally spaced ("64MiB",
 * "8G", "1.5 GiB"). The arithmetic is exact, so "1.5K" is 1500. Refused:
 * unknown units ("10XB", "10PB"), exponents ("1e400"), signs, hex, a
 * fraction of a byte ("0.5B", "1.5"), and more than
 * `Number.MAX_SAFE_INTEGER` bytes. (The `bytes` package read these as
 * 1 or 10 bytes, or parseInt of the text: issue 13.)
 * @param value a string as above, or a number of bytes (a safe non-negative integer).
 * @throws ConfigError naming `option`, the value and the accepted forms.
 */
export function parseByteSize(option: string, value: string | number): number {
  const refuse = () => {
    const shown = typeof value === "string" && value.length > 40 ? `${value.slice(0, 40)}…` : String(value);
    return new ConfigError(option, `${JSON.stringify(shown)} is not a size: use ${SIZE_FORMS}`);
  };
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) throw refuse();
    return value;
  }
  const m = /^\s*([0-9]+)(?:\.([0-9]+))?\s*([a-z]*)\s*$/i.exec(value);
  const unit = m ? SIZE_UNITS[m[3]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw refuse();
  const fraction = m[2] ?? "";
  const scale = 10n ** BigInt(fraction.length);
  const scaled = BigInt(m[1]! + fraction) * unit;
  if (scaled % scale !== 0n) throw refuse(); // a fraction of a byte
  const n = scaled / scale;
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw refuse();
  return Number(n);
}

/** Formats bytes for humans, e.g. "64MB". */
export function formatBytes(n: number): string {
  return bytes.format(n, { unitSeparator: " " }) ?? `${n} B`;
}

/**
 * Writes bytes in the largest binary unit that holds them exactly, as a
 * size option is written: 1073741824 -> "1GiB", 65536 -> "64KiB", 1000 -> "1000".
 * {@link parseByteSize} reads it back to the same number.
 */
export function formatByteSize(n: number): string {
  for (const [unit, size] of [
    ["TiB", 1024 ** 4],
    ["GiB", 1024 ** 3],
    ["MiB", 1024 ** 2],
    ["KiB", 1024],
  ] as const)
    if (n >= size && n % size === 0) return `${n / size}${unit}`;
  return String(n);
}

/** Milliseconds per unit of a duration option, lower-cased. */
const DURATION_UNITS: Readonly<Record<string, number>> = Object.freeze({
  "": 1,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
});

/**
 * Parses a duration option into milliseconds: a whole number of ms, or a
 * number (digits, optionally a decimal point) with a unit ms, s, m, h or d
 * ("30d", "1.5h", "250ms"). Refused: other units, signs, exponents, 0, and
 * more than `Number.MAX_SAFE_INTEGER` ms.
 * @param value a string as above, or a number of ms (a positive safe integer).
 * @throws ConfigError naming `option` and the accepted forms.
 */
export function parseDuration(option: string, value: string | number): number {
  const refuse = () =>
    new ConfigError(
      option,
      `${JSON.stringify(String(value).slice(0, 40))} is not a duration: use milliseconds, or a number with a ` +
        "unit ms, s, m, h or d, e.g. 30d, 12h, 90s",
    );
  const m = typeof value === "string" ? /^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$/i.exec(value) : undefined;
  const unit = m ? DURATION_UNITS[m[2]!.toLowerCase()] : 1;
  if (m === null || unit === undefined) throw refuse();
  const n = m ? Math.round(Number(m[1]) * unit) : (value as number);
  if (!Number.isSafeInteger(n) || n <= 0) throw refuse();
  return n;
}

/** Writes ms in the largest unit that holds them exactly, as a duration option is written: 2592000000 -> "30d". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ["d", 86_400_000],
    ["h", 3_600_000],
    ["m", 60_000],
    ["s", 1000],
  ] as const)
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}
