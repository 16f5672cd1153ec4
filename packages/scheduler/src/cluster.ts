/**
 * Cluster descriptions for `tessera plan`: a YAML file of node pools, each
 * with a kind (gpu | memory | storage), a count, a price ($/h per node) and
 * either a catalogue part (`part:`) or explicit figures; explicit figures
 * override the part's. Sizes are numbers of bytes or strings with SI or
 * binary suffixes ("80GB" = 80e9 B, "768GiB" = 768·2^30 B); bandwidths are
 * bytes/s or "3.35TB/s"; FLOP/s numbers or "989T".
 *
 * ```yaml
 * link: 100GbE            # default link of every pool
 * pools:
 *   - { name: gpu, kind: gpu, count: 4, part: h100-sxm-80gb }
 *   - { name: mem, kind: memory, count: 2, part: ddr5-4800-8ch, price: 2.0, capacity: 512GB }
 * ```
 */
import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { LINKS, PARTS, type LinkPart, type NodePart } from "./catalogue.js";
import type { AttentionSpec, GpuSpec, LinkSpec } from "./cost-model.js";
import type { ClusterSpec, PoolSpec } from "./planner.js";

/** A cluster file that cannot be used; the message names the file and field. */
export class ClusterFileError extends Error {
  constructor(
    readonly file: string,
    readonly field: string,
    detail: string,
  ) {
    super(`${file}: ${field}: ${detail}`);
    this.name = "ClusterFileError";
  }
}

const UNITS: Record<string, number> = {
  "": 1,
  k: 1e3,
  m: 1e6,
  g: 1e9,
  t: 1e12,
  p: 1e15,
  ki: 2 ** 10,
  mi: 2 ** 20,
  gi: 2 ** 30,
  ti: 2 ** 40,
};

/**
 * Parses "80GB", "768GiB", "3.35TB/s", "989T", "25Gb/s" (bits: divided by 8)
 * or a number into a plain number.
 * @throws Error describing the expected form, or when the value is not finite ("1e400").
 */
export function parseQuantity(v: string | number): number {
  if (typeof v === "number") return v;
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgtp]i?)?\s*(b|B|flops?|FLOP\/s)?(\/s)?\s*$/i.exec(v);
  if (!m) throw new Error(`"${v}" is not a quantity (e.g. 80GB, 768GiB, 3.35TB/s, 989T)`);
  const scale = UNITS[(m[2] ?? "").toLowerCase()] ?? 1;
  const bits = m[3] === "b";
  const n = (Number(m[1]) * scale) / (bits ? 8 : 1);
  // "1e400" reads as Infinity: refused, as the size options refuse it (issue 13).
  if (!Number.isFinite(n)) throw new Error(`"${v}" is not a finite quantity (e.g. 80GB, 768GiB, 3.35TB/s, 989T)`);
  return n;
}

const quantity = z.union([z.number().positive(), z.string()]).transform((v, ctx) => {
  try {
    const n = parseQuantity(v);
    if (!(n > 0)) throw new Error(`"${v}" must be positive`);
    return n;
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message });
    return z.NEVER;
  }
});
const fraction = z.number().gt(0).lte(1);

const linkSchema = z.union([
  z.string(),
  z.strictObject({
    bandwidth: quantity,
    sustainedFraction: fraction.optional(),
    rttS: z.number().nonnegative().optional(),
  }),
]);

const poolSchema = z.strictObject({
  name: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/, "letters, digits, _ . - only")
    .optional(),
  kind: z.enum(["gpu", "memory", "storage"]),
  count: z.number().int().nonnegative(),
  part: z.string().optional(),
  /** $/h per node; the part's assumed price when absent. */
  price: z.number().nonnegative().optional(),
  link: linkSchema.optional(),
  // Figures (override the part's).
  flops: quantity.optional(),
  flopsEfficiency: fraction.optional(),
  memoryBandwidth: quantity.optional(),
  bandwidthEfficiency: fraction.optional(),
  memory: quantity.optional(),
  pcieBandwidth: quantity.optional(),
  hostMemory: quantity.optional(),
  capacity: quantity.optional(),
  readBandwidth: quantity.optional(),
  writeBandwidth: quantity.optional(),
  drives: z.number().int().positive().optional(),
});

const clusterSchema = z.strictObject({
  name: z.string().optional(),
  link: linkSchema.optional(),
  pools: z.array(poolSchema).min(1),
});

type PoolInput = z.infer<typeof poolSchema>;

function resolveLink(file: string, field: string, v: z.infer<typeof linkSchema> | undefined): LinkSpec {
  if (v === undefined) v = "100GbE";
  if (typeof v === "string") {
    const l: LinkPart | undefined = LINKS[v];
    if (!l) throw new ClusterFileError(file, field, `unknown link "${v}" (known: ${Object.keys(LINKS).join(", ")})`);
    return { bandwidth: l.bandwidth, sustainedFraction: l.sustainedFraction, rttS: l.rttS };
  }
  return { bandwidth: v.bandwidth, sustainedFraction: v.sustainedFraction ?? 0.9, rttS: v.rttS ?? 50e-6 };
}

function need<T>(file: string, field: string, v: T | undefined, kind: string): T {
  if (v === undefined)
    throw new ClusterFileError(file, field, `required for a ${kind} pool without a catalogue part (or name a part)`);
  return v;
}

function resolvePool(file: string, i: number, p: PoolInput, defaultLink: LinkSpec): PoolSpec {
  const at = `pools[${i}]`;
  const name = p.name ?? `${p.kind}${i}`;
  let part: NodePart | undefined;
  if (p.part !== undefined) {
    part = PARTS[p.part];
    if (!part)
      throw new ClusterFileError(
        file,
        `${at}.part`,
        `unknown part "${p.part}" (known: ${Object.keys(PARTS).join(", ")})`,
      );
    if (part.kind !== p.kind)
      throw new ClusterFileError(
        file,
        `${at}.part`,
        `"${p.part}" is a ${part.kind} part, but the pool's kind is ${p.kind}`,
      );
  }
  const link = p.link === undefined ? defaultLink : resolveLink(file, `${at}.link`, p.link);
  const price = need(file, `${at}.price`, p.price ?? part?.pricePerHour, p.kind);
  if (p.kind === "gpu") {
    const g = part?.kind === "gpu" ? part : undefined;
    const spec: Omit<GpuSpec, "id"> = {
      kind: "gpu",
      pool: name,
      pricePerHour: price,
      flops: need(file, `${at}.flops`, p.flops ?? g?.flops, "gpu"),
      flopsEfficiency: p.flopsEfficiency ?? g?.flopsEfficiency ?? 0.6,
      memoryBandwidth: need(file, `${at}.memoryBandwidth`, p.memoryBandwidth ?? g?.memoryBandwidth, "gpu"),
      bandwidthEfficiency: p.bandwidthEfficiency ?? g?.bandwidthEfficiency ?? 0.8,
      memoryBytes: need(file, `${at}.memory`, p.memory ?? g?.memoryBytes, "gpu"),
      pcieBandwidth: p.pcieBandwidth ?? g?.pcieBandwidth ?? 32e9,
      hostMemoryBytes: p.hostMemory ?? g?.hostMemoryBytes ?? 0,
      link,
    };
    return { name, kind: "gpu", nodes: Array.from({ length: p.count }, (_, j) => ({ ...spec, id: `${name}#${j}` })) };
  }
  let spec: Omit<AttentionSpec, "id">;
  if (p.kind === "memory") {
    const mp = part?.kind === "memory" ? part : undefined;
    const bw = need(file, `${at}.memoryBandwidth`, p.memoryBandwidth ?? mp?.memoryBandwidth, "memory");
    spec = {
      kind: "memory",
      pool: name,
      pricePerHour: price,
      readBandwidth: bw,
      writeBandwidth: bw,
      bandwidthEfficiency: p.bandwidthEfficiency ?? mp?.bandwidthEfficiency ?? 0.7,
      capacityBytes: need(file, `${at}.capacity`, p.capacity ?? mp?.capacityBytes, "memory"),
      flops: need(file, `${at}.flops`, p.flops ?? mp?.flops, "memory"),
      flopsEfficiency: p.flopsEfficiency ?? mp?.flopsEfficiency ?? 0.5,
      link,
    };
  } else {
    const sp = part?.kind === "storage" ? part : undefined;
    const drives = p.drives ?? sp?.drives ?? 1;
    // Explicit bandwidth/capacity figures are per node; the part's are per drive.
    spec = {
      kind: "storage",
      pool: name,
      pricePerHour: price,
      readBandwidth: need(
        file,
        `${at}.readBandwidth`,
        p.readBandwidth ?? (sp ? sp.readBandwidth * drives : undefined),
        "storage",
      ),
      writeBandwidth: need(
        file,
        `${at}.writeBandwidth`,
        p.writeBandwidth ?? (sp ? sp.writeBandwidth * drives : undefined),
        "storage",
      ),
      bandwidthEfficiency: p.bandwidthEfficiency ?? sp?.bandwidthEfficiency ?? 0.8,
      capacityBytes: need(
        file,
        `${at}.capacity`,
        p.capacity ?? (sp ? sp.capacityBytes * drives : undefined),
        "storage",
      ),
      flops: need(file, `${at}.flops`, p.flops ?? sp?.flops, "storage"),
      flopsEfficiency: p.flopsEfficiency ?? sp?.flopsEfficiency ?? 0.5,
      link,
    };
  }
  return { name, kind: p.kind, nodes: Array.from({ length: p.count }, (_, j) => ({ ...spec, id: `${name}#${j}` })) };
}

/**
 * Validates and resolves a parsed cluster description (`file` names it in
 * errors) into node specs.
 * @throws ClusterFileError naming the file and field of the first problem.
 */
export function resolveCluster(file: string, doc: unknown): ClusterSpec {
  const r = clusterSchema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path
      .map((k) => (typeof k === "number" ? `[${k}]` : `.${String(k)}`))
      .join("")
      .replace(/^\./, "");
    throw new ClusterFileError(file, field || "(top level)", issue.message);
  }
  const names = new Set<string>();
  const defaultLink = resolveLink(file, "link", r.data.link);
  const pools = r.data.pools.map((p, i) => {
    const pool = resolvePool(file, i, p, defaultLink);
    if (names.has(pool.name))
      throw new ClusterFileError(file, `pools[${i}].name`, `duplicate pool name "${pool.name}"`);
    names.add(pool.name);
    return pool;
  });
  return { pools };
}

/**
 * Reads and resolves a cluster YAML file.
 * @throws ClusterFileError naming the file (and field) when it cannot be read, parsed or validated.
 */
export async function loadCluster(file: string): Promise<ClusterSpec> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new ClusterFileError(file, "(file)", (err as Error).message);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ClusterFileError(file, "(yaml)", (err as Error).message);
  }
  return resolveCluster(file, doc);
}
