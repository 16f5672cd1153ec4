/**
 * A node's self-profile on the command line (issue 4): `--profile FILE`
 * reads a NodeProfile in proto JSON, `--profile-only` prints one (JSON on
 * stdout, a table on stderr).
 */
import { readFile } from "node:fs/promises";
import type { NodeRole } from "@tessera/core";
import { NodeProfileSchema, fromJson, toJson, type NodeProfile } from "@tessera/proto";

/**
 * The node option `profile` from --profile: "measure", "off", or the
 * NodeProfile in FILE (proto JSON, as --profile-only prints it) of `role`.
 * @throws Error naming the file when it cannot be read, is not JSON, is not
 *   a tessera.v1.NodeProfile, or is another role's profile.
 */
export async function profileOption(role: NodeRole, value: string): Promise<"measure" | "off" | NodeProfile> {
  if (value === "measure" || value === "off") return value;
  let text: string;
  try {
    text = await readFile(value, "utf8");
  } catch (err) {
    throw new Error(`--profile ${value}: cannot read the profile file (${(err as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`--profile ${value}: not JSON (${(err as Error).message})`);
  }
  let profile;
  try {
    profile = fromJson(NodeProfileSchema, json as Parameters<typeof fromJson>[1]);
  } catch (err) {
    throw new Error(`--profile ${value}: not a tessera.v1.NodeProfile (${(err as Error).message})`);
  }
  if (profile.role !== role || profile.figures.case !== role)
    throw new Error(
      `--profile ${value}: a ${profile.role || "(no role)"} profile (figures ${profile.figures.case ?? "none"}), ` +
        `but this is a ${role}-node`,
    );
  return profile;
}

/** 1.23 G etc.: `v` with an SI prefix and `unit`. */
function si(v: number, unit: string): string {
  const p = ["", "k", "M", "G", "T", "P"];
  let i = 0;
  for (; Math.abs(v) >= 1000 && i < p.length - 1; i++) v /= 1000;
  return `${v.toPrecision(3)} ${p[i]}${unit}`;
}
const gib = (b: bigint | number) =>
  Number(b) >= 2 ** 30 ? `${(Number(b) / 2 ** 30).toFixed(2)} GiB` : `${(Number(b) / 2 ** 20).toFixed(1)} MiB`;
const secs = (s: number) =>
  s >= 1 ? `${s.toFixed(2)} s` : s >= 1e-3 ? `${(s * 1e3).toFixed(3)} ms` : `${(s * 1e6).toFixed(1)} µs`;

/** A short human-readable table of a profile (and `extra` rows, e.g. the node's options), for stderr. */
export function profileTable(p: NodeProfile, extra: readonly [string, string][] = []): string {
  const rows: [string, string][] = [
    ["role", p.role],
    ["price", `$${p.pricePerHour}/h`],
    ["cores", String(p.cores)],
    ["memory", gib(p.memoryBytes)],
    ["measured in", secs(p.profileSeconds)],
  ];
  const f = p.figures;
  if (f.case === "gpu") {
    const g = f.value;
    rows.push(
      ["execution provider", g.executionProvider],
      ["dense FLOP/s", si(g.flops, "FLOP/s")],
      ["weight bytes/s", si(g.weightBytesPerSecond, "B/s")],
      ["layer overhead (after 1 ms idle)", secs(g.layerOverheadSeconds)],
      ["device memory", gib(g.deviceMemoryBytes)],
      ...g.dense.map((d): [string, string] => [
        `  batch ${d.batch}`,
        `${secs(d.seconds)} (${d.k}x${d.n}, ${si((2 * d.batch * d.k * d.n) / d.seconds, "FLOP/s")})`,
      ]),
    );
  } else if (f.case === "memory") {
    const m = f.value;
    rows.push(
      ["read bandwidth", si(m.readBytesPerSecond, "B/s")],
      [`kernel KV bytes/s`, `${si(m.kernelKvBytesPerSecond, "B/s")} (${m.attentionThreads} threads)`],
      ["kernel FLOP/s", si(m.kernelFlops, "FLOP/s")],
      ["item overhead", secs(m.itemOverheadSeconds)],
      ["KV capacity", gib(m.capacityBytes)],
    );
  } else if (f.case === "storage") {
    const s = f.value;
    rows.push(
      ["disk read", si(s.readBytesPerSecond, "B/s")],
      ["disk write", si(s.writeBytesPerSecond, "B/s")],
      ["write + fdatasync", secs(s.syncSeconds)],
      ["KV capacity", gib(s.capacityBytes)],
      ["free on data dir", gib(s.freeBytes)],
      ["buffer", gib(s.bufferBytes)],
      ["kernel KV bytes/s", `${si(s.kernelKvBytesPerSecond, "B/s")} (1 thread)`],
      ["kernel FLOP/s", si(s.kernelFlops, "FLOP/s")],
      ["item overhead", secs(s.itemOverheadSeconds)],
    );
  }
  rows.push(...extra);
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n") + "\n";
}

/**
 * --profile-only: measures, prints the proto JSON on stdout and a table
 * (with `extra` rows) on stderr; exit code 0.
 */
export async function printProfile(measure: () => Promise<NodeProfile>, extra: readonly [string, string][] = []) {
  const p = await measure();
  process.stdout.write(JSON.stringify(toJson(NodeProfileSchema, p), null, 2) + "\n");
  process.stderr.write(profileTable(p, extra));
}
