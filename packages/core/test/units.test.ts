import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ConfigError,
  byteSizeOption,
  formatByteSize,
  formatDuration,
  parseByteSize,
  parseDuration,
} from "../src/index.js";

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;

test("parseByteSize accepts bytes, decimal units (powers of 1000) and binary units (powers of 1024)", () => {
  const accepted: [string | number, number][] = [
    ["0", 0],
    ["1048576", 1048576],
    [" 4096 ", 4096],
    [65536, 65536],
    ["1B", 1],
    ["512b", 512],
    ["8K", 8e3],
    ["8k", 8e3],
    ["8KB", 8e3],
    ["8kB", 8e3],
    ["2M", 2e6],
    ["2MB", 2e6],
    ["8G", 8e9],
    ["2GB", 2e9],
    ["1T", 1e12],
    ["3TB", 3e12],
    ["64Ki", 64 * KiB],
    ["64KiB", 64 * KiB],
    ["512Mi", 512 * MiB],
    ["512MiB", 512 * MiB],
    ["64mib", 64 * MiB],
    ["1Gi", GiB],
    ["1GiB", GiB],
    ["8GiB", 8 * GiB],
    ["900GiB", 900 * GiB],
    ["2Ti", 2 * TiB],
    ["2TiB", 2 * TiB],
    ["1.5GiB", 1.5 * GiB],
    ["1.5K", 1500],
    ["0.5KiB", 512],
    ["2.25 MB", 2_250_000],
    ["1.0", 1],
  ];
  for (const [value, want] of accepted) assert.equal(parseByteSize("--capacity", value), want, `"${value}"`);
});

test("parseByteSize refuses unknown units, exponents, fractions of a byte, negatives and unsafe integers, naming the flag", () => {
  const refused: (string | number)[] = [
    "",
    " ",
    "lots",
    "10XB",
    "10PB",
    "1e400",
    "1e3",
    "1E3KB",
    "Infinity",
    "NaN",
    "-1",
    "-1MiB",
    "+5",
    "0x10",
    "1.5",
    "0.5B",
    "1.0001KiB",
    ".5K",
    "5.K",
    "1,024",
    "8 G B",
    "8GiBs",
    "9007199254740992",
    "8192TiB",
    "12Mb/s",
    1.5,
    -1,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    2 ** 53,
  ];
  for (const value of refused) {
    assert.throws(
      () => parseByteSize("--capacity", value),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.option === "--capacity" &&
        /^--capacity: ".*" is not a size: .*powers of 1024/.test(err.message),
      `"${String(value)}"`,
    );
  }
});

test("byteSizeOption: strict sizes, the default and the minimum", () => {
  assert.equal(byteSizeOption("bufferBytes", undefined, 64 * MiB), 64 * MiB);
  assert.equal(byteSizeOption("bufferBytes", "64MiB", 0, 4096), 64 * MiB);
  assert.throws(() => byteSizeOption("bufferBytes", "8G B", 0), /bufferBytes: "8G B" is not a size/);
  assert.throws(() => byteSizeOption("bufferBytes", "1KiB", 0, 4096), /bufferBytes: must be at least 4096 bytes/);
});

test("formatByteSize writes what parseByteSize reads back", () => {
  for (const n of [0, 1000, 1024, 65536, 64 * MiB, GiB, 3 * TiB, 123456789])
    assert.equal(parseByteSize("x", formatByteSize(n)), n);
});

test("parseDuration reads ms or a number with ms/s/m/h/d (issue 13's --job-retention), refuses the rest naming the flag; formatDuration writes it back", () => {
  assert.equal(parseDuration("--job-retention", "30d"), 30 * 86_400_000);
  assert.equal(parseDuration("--job-retention", "12h"), 12 * 3_600_000);
  assert.equal(parseDuration("--job-retention", "1.5m"), 90_000);
  assert.equal(parseDuration("--job-retention", "250ms"), 250);
  assert.equal(parseDuration("--job-retention", "90S"), 90_000);
  assert.equal(parseDuration("--job-retention", "5000"), 5000);
  assert.equal(parseDuration("--job-retention", 5000), 5000);
  for (const bad of ["", "0", "0d", "-1d", "1e3", "10w", "1 month", "0x10", 0, -5, 1.5]) {
    assert.throws(
      () => parseDuration("--job-retention", bad),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message.startsWith("--job-retention: ") &&
        err.message.includes("is not a duration: use milliseconds, or a number with a unit ms, s, m, h or d"),
      String(bad),
    );
  }
  for (const ms of [30 * 86_400_000, 3_600_000, 90_000, 1500, 1])
    assert.equal(parseDuration("d", formatDuration(ms)), ms);
  assert.equal(formatDuration(30 * 86_400_000), "30d");
  assert.equal(formatDuration(600_000), "10m");
  assert.equal(formatDuration(1500), "1500ms");
});
