/**
 * `tessera plan --apply`: scales the node pools' StatefulSets (the Helm
 * chart's `<release>-tessera-<role>-<pool>`) to the number of nodes of each
 * pool the planner's best plan uses, through the StatefulSets' `scale`
 * subresource with `@kubernetes/client-node`.
 */
import { AppsV1Api, KubeConfig } from "@kubernetes/client-node";
import { RUNNABLE_KV_MODES, type ClusterSpec, type Plan } from "@tessera/scheduler";
import { formatPlan, planFromFlags, type PlanFlags } from "./plan.js";
import type { NodeRole } from "@tessera/core";

/** Nodes of one pool a plan asks for. */
export interface PoolReplicas {
  role: NodeRole;
  pool: string;
  replicas: number;
  /** Whether the plan uses the pool (replicas > 0). */
  used: boolean;
}

/**
 * The replicas of every pool of `cluster` under `best`: the distinct nodes
 * of the pool that hold a pipeline stage or a KV share (0 for a pool the
 * plan leaves out), in the cluster file's pool order.
 */
export function planReplicas(best: Plan, cluster: ClusterSpec): PoolReplicas[] {
  const ids = new Map<string, Set<string>>();
  const use = (pool: string, id: string) => {
    let s = ids.get(pool);
    if (!s) ids.set(pool, (s = new Set()));
    s.add(id);
  };
  for (const s of best.placement.stages) use(s.node.pool, s.node.id);
  if (best.placement.kv.mode === "nodes") for (const s of best.placement.kv.shares) use(s.node.pool, s.node.id);
  return cluster.pools.map((p) => {
    const replicas = ids.get(p.name)?.size ?? 0;
    return { role: p.kind, pool: p.name, replicas, used: replicas > 0 };
  });
}

/**
 * Why `best` must not be applied, or undefined when it may: its KV cache
 * must live where the runtime can hold it ({@link RUNNABLE_KV_MODES}: memory-
 * and storage-nodes), and `pools` (its {@link planReplicas}) must keep a
 * gpu-node and at least one node able to hold the KV — scaling every
 * attention pool to 0 would leave a cluster that can run no job.
 */
export function planRefusal(best: Plan, pools: readonly PoolReplicas[]): string | undefined {
  const mode = best.placement.kv.mode;
  if (!RUNNABLE_KV_MODES.includes(mode)) {
    return (
      `the plan keeps the KV cache in ${mode === "gpu" ? "GPU" : "host"} memory, which Tessera's runtime cannot ` +
      "run (it holds the KV on memory- and storage-nodes only)"
    );
  }
  const replicas = (attention: boolean) =>
    pools.filter((p) => (p.role !== "gpu") === attention).reduce((n, p) => n + p.replicas, 0);
  if (replicas(true) === 0) {
    const names = pools.filter((p) => p.role !== "gpu").map((p) => `${p.role} pool "${p.pool}"`);
    return (
      "the plan leaves no memory- or storage-node to hold the KV cache" +
      (names.length > 0 ? ` (it would scale ${names.join(", ")} to 0)` : " (the cluster file has none)")
    );
  }
  if (replicas(false) === 0) return "the plan leaves no gpu-node to run the dense layers";
  return undefined;
}

/** The Helm chart's "tessera.fullname" of a release (no nameOverride / fullnameOverride). */
export function chartFullname(release: string): string {
  const full = release.includes("tessera") ? release : `${release}-tessera`;
  return full.slice(0, 30).replace(/-+$/, "");
}

/** Default of `--statefulset-pattern`: the chart's StatefulSet names. */
export const DEFAULT_STATEFULSET_PATTERN = "{fullname}-{role}-{pool}";

/**
 * A pool's StatefulSet name from `pattern`, whose placeholders are
 * `{release}`, `{fullname}` (the chart's "<release>-tessera"), `{role}` and `{pool}`.
 * @throws RangeError naming the pattern when it holds another placeholder.
 */
export function statefulSetName(pattern: string, v: { release: string; role: string; pool: string }): string {
  return pattern.replace(/\{([^}]*)\}/g, (_, key: string) => {
    const value = { release: v.release, fullname: chartFullname(v.release), role: v.role, pool: v.pool }[key];
    if (value === undefined) {
      throw new RangeError(
        `--statefulset-pattern ${JSON.stringify(pattern)}: unknown placeholder {${key}} (use {release}, {fullname}, {role}, {pool})`,
      );
    }
    return value;
  });
}

/** A pool of the plan whose StatefulSet is not there (the API answered 404). */
export class StatefulSetNotFoundError extends Error {
  constructor(
    readonly statefulSet: string,
    readonly namespace: string,
    readonly pool: PoolReplicas,
    server: string,
  ) {
    super(
      `statefulset "${statefulSet}" not found in namespace "${namespace}" (Kubernetes API ${server}): ` +
        `the plan runs ${pool.replicas} node(s) of ${pool.role} pool "${pool.pool}" and nothing is scaled; ` +
        `name the pool as in the chart's values, or set --release / --statefulset-pattern / --namespace`,
    );
    this.name = "StatefulSetNotFoundError";
  }
}

/** Options of {@link scaleStatefulSets}. */
export interface ScaleOptions {
  /** @default KubeConfig.loadFromDefault() */
  kubeconfig?: KubeConfig;
  /** @default the kubeconfig context's namespace, else "default" */
  namespace?: string;
  /** Helm release name. @default "tessera" */
  release?: string;
  /** @default {@link DEFAULT_STATEFULSET_PATTERN} */
  statefulSetPattern?: string;
  /** Read the current scales only; patch nothing. @default false */
  dryRun?: boolean;
}

/** What happened (or, on a dry run, would happen) to one pool's StatefulSet. */
export interface ScaleChange extends PoolReplicas {
  statefulSet: string;
  namespace: string;
  /** Replicas before; undefined when an unused pool has no StatefulSet (then nothing is done). */
  from: number | undefined;
  /** Replicas asked for. */
  to: number;
  /** Whether a patch was (or, dry, would be) sent. */
  patched: boolean;
}

function httpCode(e: unknown): number | undefined {
  const c = (e as { code?: unknown }).code;
  return typeof c === "number" ? c : undefined;
}

function apiMessage(e: unknown): string {
  const body = (e as { body?: unknown }).body;
  let parsed: unknown = body;
  if (typeof body === "string") {
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = undefined;
    }
  }
  const m = (parsed as { message?: unknown } | undefined)?.message;
  const code = httpCode(e);
  return `${code === undefined ? "" : `HTTP ${code}: `}${typeof m === "string" ? m : ((e as Error).message ?? String(e)).split("\n")[0]}`;
}

/**
 * Scales each pool's StatefulSet to `pools[i].replicas`: reads every scale
 * first (so nothing is patched when one is missing), then JSON-patches
 * `/spec/replicas` of those that differ. A pool the plan does not use
 * (replicas 0) whose StatefulSet does not exist is skipped.
 * @returns one change per pool, in order.
 * @throws StatefulSetNotFoundError naming the StatefulSet, namespace and pool
 *   when a used pool has none; Error naming the API server and StatefulSet
 *   for any other API failure (no permission, unreachable); RangeError for a
 *   bad pattern.
 */
export async function scaleStatefulSets(pools: PoolReplicas[], o: ScaleOptions = {}): Promise<ScaleChange[]> {
  let kc = o.kubeconfig;
  if (!kc) {
    kc = new KubeConfig();
    kc.loadFromDefault();
  }
  const server = kc.getCurrentCluster()?.server ?? "(no cluster in the kubeconfig)";
  const namespace = o.namespace ?? kc.getContextObject(kc.getCurrentContext())?.namespace ?? "default";
  const release = o.release ?? "tessera";
  const pattern = o.statefulSetPattern ?? DEFAULT_STATEFULSET_PATTERN;
  const apps = kc.makeApiClient(AppsV1Api);

  const changes: ScaleChange[] = [];
  for (const p of pools) {
    const name = statefulSetName(pattern, { release, role: p.role, pool: p.pool });
    let from: number | undefined;
    try {
      from = (await apps.readNamespacedStatefulSetScale({ name, namespace })).spec?.replicas ?? 0;
    } catch (e) {
      if (httpCode(e) !== 404) {
        throw new Error(
          `Kubernetes API ${server}: reading the scale of statefulset "${name}" in namespace "${namespace}": ${apiMessage(e)}`,
          { cause: e },
        );
      }
      if (p.used) throw new StatefulSetNotFoundError(name, namespace, p, server);
    }
    changes.push({
      ...p,
      statefulSet: name,
      namespace,
      from,
      to: p.replicas,
      patched: from !== undefined && from !== p.replicas,
    });
  }
  if (o.dryRun) return changes;
  const scaled: string[] = [];
  for (const c of changes) {
    if (!c.patched) continue;
    try {
      await apps.patchNamespacedStatefulSetScale({
        name: c.statefulSet,
        namespace,
        body: [{ op: "replace", path: "/spec/replicas", value: c.to }],
        fieldManager: "tessera-plan",
      });
      scaled.push(c.statefulSet);
    } catch (e) {
      throw new Error(
        `Kubernetes API ${server}: scaling statefulset "${c.statefulSet}" in namespace "${namespace}" ` +
          `from ${c.from} to ${c.to}: ${apiMessage(e)}` +
          (scaled.length > 0 ? ` (already scaled: ${scaled.join(", ")})` : ""),
        { cause: e },
      );
    }
  }
  return changes;
}

/** Flags of `tessera plan --apply`: `tessera plan`'s and where the StatefulSets are. */
export interface PlanApplyFlags extends PlanFlags {
  /** A kubeconfig file; default KUBECONFIG, ~/.kube/config or in-cluster. */
  kubeconfig?: string;
  namespace?: string;
  release: string;
  statefulSetPattern: string;
  dryRun: boolean;
}

/** One line per pool: what changed or would change. */
export function formatChanges(changes: ScaleChange[], dryRun: boolean): string {
  return (
    changes
      .map((c) => {
        const what = `statefulset ${c.namespace}/${c.statefulSet} (${c.role} pool ${c.pool})`;
        if (c.from === undefined) return `${what}: not found; the plan does not use the pool, skipped`;
        if (!c.patched) return `${what}: ${c.to} replicas, unchanged`;
        return `${what}: ${c.from} → ${c.to} replicas${dryRun ? " (dry run: not applied)" : ""}`;
      })
      .join("\n") + "\n"
  );
}

/**
 * `tessera plan --apply [--dry-run]`: plans as `tessera plan` does, prints
 * the plan, then scales the pools' StatefulSets to it (or prints what would
 * change). With --json prints `{ plan, changes }`.
 * @returns 0 when applied (or dry), 2 when no plan fits or the plan is
 *   refused ({@link planRefusal}; nothing is scaled).
 * @throws StatefulSetNotFoundError / Error as {@link scaleStatefulSets};
 *   ClusterFileError naming the cluster file and field.
 */
export async function planApplyCommand(flags: PlanApplyFlags): Promise<number> {
  const { name, cluster, result: r } = await planFromFlags(flags);
  if (!flags.json) process.stdout.write(formatPlan(name, flags, r));
  if (!r.best) {
    if (flags.json) process.stdout.write(JSON.stringify({ plan: null, infeasible: r.infeasible ?? null }) + "\n");
    process.stderr.write("tessera plan --apply: no plan fits; nothing is scaled\n");
    return 2;
  }
  const pools = planReplicas(r.best, cluster);
  const refusal = planRefusal(r.best, pools);
  if (refusal !== undefined) {
    if (flags.json) process.stdout.write(JSON.stringify({ plan: r.best.summary, refused: refusal }) + "\n");
    process.stderr.write(`tessera plan --apply: refused: ${refusal}; nothing is scaled\n`);
    return 2;
  }
  let kubeconfig: KubeConfig | undefined;
  if (flags.kubeconfig !== undefined) {
    kubeconfig = new KubeConfig();
    kubeconfig.loadFromFile(flags.kubeconfig);
  }
  const changes = await scaleStatefulSets(pools, {
    ...(kubeconfig ? { kubeconfig } : {}),
    ...(flags.namespace !== undefined ? { namespace: flags.namespace } : {}),
    release: flags.release,
    statefulSetPattern: flags.statefulSetPattern,
    dryRun: flags.dryRun,
  });
  if (flags.json) {
    process.stdout.write(JSON.stringify({ plan: r.best.summary, dryRun: flags.dryRun, changes }, null, 2) + "\n");
  } else process.stdout.write("\n" + formatChanges(changes, flags.dryRun));
  return 0;
}
