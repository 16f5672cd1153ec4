import bytes from "bytes";
import { ConfigError } from "./errors.js";

/**
 * Parses a size option ("64MiB", "2GB", "1048576") into bytes. Binary and
 * decimal suffixes are both read as binary (1 KB = 1024 B), as the `bytes`
 * package does.
 * @throws ConfigError naming `option` when the value is not a size.
 */
export function parseByteSize(option: string, value: string | number): number {
  const n = typeof value === "number" ? value : bytes.parse(value.replace(/iB$/i, "B"));
  if (n === null || !Number.isFinite(n) || n < 0)
    throw new ConfigError(option, `"${value}" is not a size (e.g. 64MiB, 2GB)`);
  return Math.floor(n);
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
