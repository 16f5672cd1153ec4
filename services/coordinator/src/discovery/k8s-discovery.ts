/**
 * Node discovery on Kubernetes (`--kubernetes`): lists and watches the node
 * pods of a namespace by label through `@kubernetes/client-node`'s
 * ListWatch informer, and reports them the way the NATS node registry does
 * (joined / left / lost / back), so the coordinator's membership follows the
 * pods the Helm chart's StatefulSets run.
 *
 * A pod's role comes from its `tessera.io/role` label (gpu | memory |
 * storage), else from `app.kubernetes.io/component` (gpu-node | memory-node
 * | storage-node); its address is its stable DNS name
 * `<hostname>.<subdomain>.<namespace>.svc.<clusterDomain>` when it has a
 * hostname and subdomain (StatefulSet pods do; that is the name their TLS
 * certificates and their NATS registry records carry), else its pod IP; the
 * port is the container port named `grpc`, else the role's default
 * (`ROLES[role].defaultPort` of @tessera/core, as helm/tessera's values).
 */
import { CoreV1Api, KubeConfig, makeInformer, type V1Pod } from "@kubernetes/client-node";
import type { RegistryRole } from "@tessera/nats";
import { NODE_ROLES, ROLES, isNodeRole } from "@tessera/core";
import { COORDINATOR_DEFAULTS } from "../options.js";

/** A change of the node set seen on Kubernetes; the fields a NATS RegistryEvent has, but its record. */
export interface KubernetesNodeEvent {
  /**
   * "joined": a pod became Ready for the first time; "lost": a joined pod is
   * no longer Ready (or is terminating); "back": it is Ready again; "left":
   * a joined pod was deleted (or its address changed: "left" for the old one).
   */
  kind: "joined" | "left" | "lost" | "back";
  role: RegistryRole;
  /** host:port the node is reached at. */
  address: string;
  /** Why, for logs, e.g. "pod tessera/t-tessera-gpu-default-0 Ready". */
  reason: string;
  /** The pod, "<namespace>/<name>". */
  pod: string;
  /** The pod's `tessera.io/pool` label, when it has one. */
  pool: string | undefined;
}

/** Options of {@link watchKubernetes}. */
export interface WatchKubernetesOptions {
  /** Where the API server is and how to authenticate. @default KubeConfig.loadFromDefault() (KUBECONFIG, ~/.kube/config, or the in-cluster service account) */
  kubeconfig?: KubeConfig;
  /** Namespace of the node pods. @default the kubeconfig context's namespace, else "default" */
  namespace?: string;
  /** Label selector of the node pods. @default "app.kubernetes.io/part-of=tessera" */
  labelSelector?: string;
  /** Cluster DNS domain appended to pod DNS names; "" for none. @default "cluster.local" */
  clusterDomain?: string;
  /** Called on every change, in order; an exception is logged and does not stop the watch. */
  onEvent(event: KubernetesNodeEvent): void;
  /** Log sink. @default stderr */
  log?: (line: string) => void;
  /** First delay before re-watching after an error, in ms (doubles up to 30 s). @default 1000 */
  retryMs?: number;
}

/** A running Kubernetes discovery. */
export interface KubernetesWatcher {
  /** Namespace and selector watched, for logs: "<namespace> (<selector>)". */
  readonly source: string;
  /** The nodes known now: joined and not left, with whether they are up; sorted by pod. */
  nodes(): { pod: string; role: RegistryRole; address: string; up: boolean }[];
  /** Stops watching. Idempotent. */
  stop(): Promise<void>;
}

/** Discovery that cannot start; the message names the API server, namespace and selector. */
export class KubernetesDiscoveryError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KubernetesDiscoveryError";
  }
}

/** The role of a pod from its labels, or undefined when it has none Tessera knows. */
export function podRole(pod: V1Pod): RegistryRole | undefined {
  const labels = pod.metadata?.labels ?? {};
  const role = labels["tessera.io/role"];
  if (role !== undefined && isNodeRole(role)) return role;
  const component = labels["app.kubernetes.io/component"];
  return NODE_ROLES.find((r) => ROLES[r].label === component);
}

/**
 * The host:port a node pod is reached at (see the module comment), or
 * undefined while it has neither a DNS name nor an IP.
 */
export function podAddress(
  pod: V1Pod,
  role: RegistryRole,
  clusterDomain: string = COORDINATOR_DEFAULTS.kubernetesClusterDomain,
): string | undefined {
  const ports = (pod.spec?.containers ?? []).flatMap((c) => c.ports ?? []);
  const port = ports.find((p) => p.name === "grpc")?.containerPort ?? ROLES[role].defaultPort;
  const { hostname, subdomain } = pod.spec ?? {};
  let host: string | undefined;
  if (hostname && subdomain) {
    host = `${hostname}.${subdomain}.${pod.metadata?.namespace ?? "default"}.svc`;
    if (clusterDomain !== "") host += `.${clusterDomain}`;
  } else {
    const ip = pod.status?.podIP;
    host = ip ? (ip.includes(":") ? `[${ip}]` : ip) : undefined;
  }
  return host === undefined ? undefined : `${host}:${port}`;
}

/** Whether a pod is Ready and not terminating. */
export function podReady(pod: V1Pod): boolean {
  if (pod.metadata?.deletionTimestamp) return false;
  return (pod.status?.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
}

/**
 * Watches the node pods of `namespace` that match `labelSelector` (list,
 * then watch from the list's resourceVersion) and reports each change of a
 * node to `onEvent`: a pod that becomes Ready joins (pods not yet Ready are
 * not reported), one no longer Ready is lost, Ready again is back, and a
 * joined pod that is deleted has left. Pods without a Tessera role label are
 * logged once and ignored.
 *
 * A watch the API server ends resumes from the last resourceVersion seen; a
 * 410 Gone (history compacted) lists again, reporting what changed in
 * between (deleted pods leave); other errors (connection reset, API server
 * down, 403) are logged naming the API server, namespace and selector and
 * the watch is retried from the last resourceVersion after `retryMs`,
 * doubling to 30 s. A node is reported once per change, however often the
 * watch restarts.
 *
 * Resolves once the pods present at the start have been reported.
 * @throws KubernetesDiscoveryError naming the API server, namespace and
 *   selector when the first list fails (unreachable, no permission to list
 *   pods, no cluster in the kubeconfig).
 */
export async function watchKubernetes(o: WatchKubernetesOptions): Promise<KubernetesWatcher> {
  const log = o.log ?? ((line: string) => process.stderr.write(line + "\n"));
  let kc = o.kubeconfig;
  if (!kc) {
    kc = new KubeConfig();
    kc.loadFromDefault();
  }
  const server = kc.getCurrentCluster()?.server;
  const namespace = o.namespace ?? kc.getContextObject(kc.getCurrentContext())?.namespace ?? "default";
  const labelSelector = o.labelSelector ?? "app.kubernetes.io/part-of=tessera";
  const clusterDomain = o.clusterDomain ?? COORDINATOR_DEFAULTS.kubernetesClusterDomain;
  const source = `${namespace} (${labelSelector})`;
  const where = `Kubernetes API ${server ?? "(no cluster in the kubeconfig)"}, namespace ${source}`;
  if (!server) throw new KubernetesDiscoveryError(`${where}: the kubeconfig names no current cluster`);
  const retryMs = o.retryMs ?? 1000;

  const core = kc.makeApiClient(CoreV1Api);
  let listError: unknown;
  let listed = false;
  const informer = makeInformer(
    kc,
    `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods`,
    async () => {
      try {
        const list = await core.listNamespacedPod({ namespace, labelSelector });
        listed = true;
        return list;
      } catch (e) {
        listError = e;
        throw e;
      }
    },
    labelSelector,
  );

  /** Nodes by pod uid-independent key "<ns>/<name>". */
  const known = new Map<string, { role: RegistryRole; address: string; up: boolean; pool: string | undefined }>();
  const unlabelled = new Set<string>();
  const emit = (
    kind: KubernetesNodeEvent["kind"],
    pod: string,
    n: { role: RegistryRole; address: string; pool: string | undefined },
    reason: string,
  ) => {
    try {
      o.onEvent({ kind, role: n.role, address: n.address, reason, pod, pool: n.pool });
    } catch (e) {
      log(`kubernetes: handler of ${kind} ${n.role}-node ${n.address} (pod ${pod}) failed: ${(e as Error).message}`);
    }
  };

  const seen = (pod: V1Pod) => {
    const key = `${pod.metadata?.namespace ?? namespace}/${pod.metadata?.name ?? "?"}`;
    const role = podRole(pod);
    if (!role) {
      if (!unlabelled.has(key)) {
        unlabelled.add(key);
        log(
          `kubernetes: pod ${key} matches ${labelSelector} but has no tessera.io/role (gpu|memory|storage) ` +
            `or app.kubernetes.io/component (gpu-node|memory-node|storage-node) label; ignored`,
        );
      }
      return;
    }
    const address = podAddress(pod, role, clusterDomain);
    const ready = podReady(pod) && address !== undefined;
    const pool = pod.metadata?.labels?.["tessera.io/pool"];
    const node = known.get(key);
    if (node && address !== undefined && node.address !== address) {
      known.delete(key);
      emit("left", key, node, `pod ${key} moved to ${address}`);
      return seen(pod);
    }
    if (!node) {
      if (ready) {
        known.set(key, { role, address, up: true, pool });
        emit("joined", key, { role, address, pool }, `pod ${key} Ready`);
      }
      return;
    }
    if (node.up && !ready) {
      node.up = false;
      emit("lost", key, node, `pod ${key} ${pod.metadata?.deletionTimestamp ? "terminating" : "not Ready"}`);
    } else if (!node.up && ready) {
      node.up = true;
      emit("back", key, node, `pod ${key} Ready again`);
    }
  };
  const gone = (pod: V1Pod) => {
    const key = `${pod.metadata?.namespace ?? namespace}/${pod.metadata?.name ?? "?"}`;
    unlabelled.delete(key);
    const node = known.get(key);
    if (!node) return;
    known.delete(key);
    emit("left", key, node, `pod ${key} deleted`);
  };
  informer.on("add", seen);
  informer.on("update", seen);
  informer.on("delete", gone);

  let stopped = false;
  let started = false;
  let delay = retryMs;
  let retry: NodeJS.Timeout | undefined;
  let errors = 0;
  informer.on("error", (e: unknown) => {
    errors++;
    // A first list that fails is thrown by watchKubernetes itself.
    if (stopped || (!started && !listed)) return;
    log(`kubernetes: watching pods in ${where}: ${describeApiError(e)}; retrying in ${delay} ms`);
    clearTimeout(retry);
    retry = setTimeout(() => {
      if (stopped) return;
      const before = errors;
      informer
        .start()
        .then(() => {
          // Listed (when it had to) and watching again: the next failure waits retryMs again.
          if (errors === before) delay = retryMs;
        })
        .catch((err: unknown) => log(`kubernetes: restarting the watch in ${where}: ${describeApiError(err)}`));
    }, delay);
    retry.unref();
    delay = Math.min(delay * 2, 30_000);
  });

  await informer.start();
  if (listError !== undefined && !listed) {
    await informer.stop();
    throw new KubernetesDiscoveryError(`${where}: cannot list pods: ${describeApiError(listError)}`, {
      cause: listError,
    });
  }
  started = true;
  log(`kubernetes: watching node pods in ${where} (${known.size} ready)`);

  return {
    source,
    nodes: () =>
      [...known.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([pod, n]) => ({ pod, role: n.role, address: n.address, up: n.up })),
    async stop() {
      if (stopped) return;
      stopped = true;
      clearTimeout(retry);
      await informer.stop();
    },
  };
}

/** "HTTP 403: <the Status' message>" (first line, with its cause) of a Kubernetes API client error. */
function describeApiError(e: unknown): string {
  const err = e as { code?: unknown; statusCode?: unknown; body?: unknown; message?: string };
  const code =
    typeof err.code === "number" ? err.code : typeof err.statusCode === "number" ? err.statusCode : undefined;
  let message = err.message ?? String(e);
  // client-node's ApiException puts the whole response in the message; the Status' message says it.
  const body = typeof err.body === "string" ? safeJson(err.body) : err.body;
  if (body && typeof body === "object" && typeof (body as { message?: unknown }).message === "string") {
    message = (body as { message: string }).message;
  }
  const cause = (e as { cause?: { message?: string } }).cause?.message;
  return `${code === undefined ? "" : `HTTP ${code}: `}${message.split("\n")[0]}${cause ? ` (${cause})` : ""}`;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
