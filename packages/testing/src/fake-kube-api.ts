/**
 * A local HTTP server that speaks the part of the Kubernetes API Tessera
 * uses, for tests of the `--kubernetes` discovery and `tessera plan --apply`
 * against a real `@kubernetes/client-node` (a KubeConfig pointing at it):
 *
 * - `GET /api/v1/namespaces/{ns}/pods?labelSelector=…` → a PodList with the
 *   current resourceVersion;
 * - `GET /api/v1/namespaces/{ns}/pods?watch=true&resourceVersion=…` → a
 *   chunked stream of JSON watch events (one per line), replaying the events
 *   after `resourceVersion` from history first. A resourceVersion older than
 *   the last {@link FakeKubeApi.compact} gets, as from a real API server, a
 *   200 with one `ERROR` event holding a 410 Expired Status, then the end of
 *   the stream; no resourceVersion (or "0") starts with an `ADDED` event per
 *   matching pod. `allowWatchBookmarks=true` streams get {@link FakeKubeApi.bookmark}s;
 * - `GET|PATCH /apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale` →
 *   an autoscaling/v1 Scale; PATCH takes a JSON patch (what client-node
 *   sends by default: `replace`/`add`/`test` of `/spec/replicas`), a merge
 *   patch or a strategic-merge patch. An unknown StatefulSet is a 404
 *   NotFound Status naming it, as the API server writes it.
 *
 * Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
 * `k notin (a,b)`, comma-separated. A pod whose labels change does not turn
 * into ADDED/DELETED for selectors it enters or leaves (a MODIFIED event is
 * sent when it matches after the change). No authentication.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { NodeRole } from "@tessera/core";

/** A pod as the fake stores and serves it (the JSON of a core/v1 Pod; only the fields used are typed). */
export interface FakePod {
  metadata: {
    name: string;
    namespace: string;
    labels?: Record<string, string>;
    uid?: string;
    resourceVersion?: string;
    deletionTimestamp?: string;
    [k: string]: unknown;
  };
  spec?: {
    hostname?: string;
    subdomain?: string;
    containers?: { name: string; ports?: { name?: string; containerPort: number; protocol?: string }[] }[];
    [k: string]: unknown;
  };
  status?: {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string }[];
    [k: string]: unknown;
  };
}

/** A request the fake served (for assertions on what the client asked). */
export interface FakeKubeRequest {
  method: string;
  /** Path without the query, e.g. "/api/v1/namespaces/ns/pods". */
  path: string;
  query: Record<string, string>;
  contentType: string | undefined;
  /** The parsed JSON body (PATCH), else undefined. */
  body: unknown;
  /** The HTTP status answered. */
  status: number;
}

/** One stored watch event. */
interface StoredEvent {
  type: "ADDED" | "MODIFIED" | "DELETED";
  rv: number;
  pod: FakePod;
}

interface Watcher {
  namespace: string;
  selector: (labels: Record<string, string>) => boolean;
  res: ServerResponse;
  bookmarks: boolean;
}

interface FakeStatefulSet {
  namespace: string;
  name: string;
  replicas: number;
  rv: number;
}

/**
 * Parses a Kubernetes label selector into a predicate.
 * @throws Error naming the selector and the part that is not understood.
 */
export function parseLabelSelector(selector: string): (labels: Record<string, string>) => boolean {
  const parts: string[] = [];
  // Split on commas outside parentheses.
  let depth = 0;
  let cur = "";
  for (const ch of selector) {
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    if (ch === "," && depth === 0) {
      parts.push(cur);
      cur = "";
    } else cur += ch;
  }
  parts.push(cur);
  const tests = parts
    .map((p) => p.trim())
    .filter((p) => p !== "")
    .map((p): ((l: Record<string, string>) => boolean) => {
      let m: RegExpExecArray | null;
      if ((m = /^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(p))) {
        const [, key, op, vals] = m as unknown as [string, string, string, string];
        const set = new Set(vals.split(",").map((v) => v.trim()));
        return op === "in" ? (l) => l[key] !== undefined && set.has(l[key]) : (l) => !set.has(l[key] ?? "\0");
      }
      if ((m = /^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$/.exec(p))) {
        const [, key, op, val] = m as unknown as [string, string, string, string];
        return op === "!=" ? (l) => l[key] !== val : (l) => l[key] === val;
      }
      if ((m = /^!\s*([\w./-]+)$/.exec(p))) {
        const key = m[1]!;
        return (l) => l[key] === undefined;
      }
      if ((m = /^([\w./-]+)$/.exec(p))) {
        const key = m[1]!;
        return (l) => l[key] !== undefined;
      }
      throw new Error(`labelSelector ${JSON.stringify(selector)}: cannot parse ${JSON.stringify(p)}`);
    });
  return (labels) => tests.every((t) => t(labels));
}

const clone = <T>(v: T): T => structuredClone(v);

/** A running fake Kubernetes API server on a loopback port. */
export class FakeKubeApi {
  /** Every request served, in order. */
  readonly requests: FakeKubeRequest[] = [];
  private rv = 1000;
  /** Watches from a resourceVersion below this get 410 Gone. */
  private compactedRv = 0;
  private readonly pods = new Map<string, FakePod>();
  private readonly history: StoredEvent[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly statefulSets = new Map<string, FakeStatefulSet>();
  private uid = 0;

  private constructor(
    private readonly server: Server,
    /** Base URL, e.g. "http://127.0.0.1:41234". */
    readonly url: string,
  ) {}

  /** Starts a fake API server on 127.0.0.1 and a free port. */
  static async start(): Promise<FakeKubeApi> {
    let api!: FakeKubeApi;
    const server = createServer((req, res) => {
      api.handle(req, res).catch((e: unknown) => {
        if (!res.headersSent) api.status(res, 500, "InternalError", (e as Error).message);
        else res.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    api = new FakeKubeApi(server, `http://127.0.0.1:${port}`);
    return api;
  }

  /**
   * A kubeconfig (JSON, which is YAML) whose current context points at this
   * server with namespace `namespace`: pass it to `KubeConfig.loadFromString`.
   */
  kubeconfig(namespace = "default"): string {
    return JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      // Plain HTTP on loopback: client-node refuses http:// unless TLS verification is off.
      clusters: [{ name: "fake", cluster: { server: this.url, "insecure-skip-tls-verify": true } }],
      users: [{ name: "fake", user: {} }],
      contexts: [{ name: "fake", context: { cluster: "fake", user: "fake", namespace } }],
      "current-context": "fake",
    });
  }

  /** The current resourceVersion (of the last change), as a string. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  /** Open watch streams now. */
  get openWatches(): number {
    return this.watchers.size;
  }

  /** Adds a pod (ADDED); fills uid and resourceVersion. @throws Error when it exists. */
  addPod(pod: FakePod): FakePod {
    const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
    if (this.pods.has(key)) throw new Error(`pod ${key} exists`);
    const p = clone(pod);
    p.metadata.uid ??= `uid-${++this.uid}`;
    return this.record("ADDED", key, p);
  }

  /** Changes a pod with `change` (MODIFIED). @throws Error when there is no such pod. */
  updatePod(namespace: string, name: string, change: (pod: FakePod) => void): FakePod {
    const key = `${namespace}/${name}`;
    const old = this.pods.get(key);
    if (!old) throw new Error(`pod ${key} not found`);
    const p = clone(old);
    change(p);
    return this.record("MODIFIED", key, p);
  }

  /** Sets the pod's Ready condition (MODIFIED). @throws Error when there is no such pod. */
  setPodReady(namespace: string, name: string, ready: boolean): FakePod {
    return this.updatePod(namespace, name, (p) => {
      p.status ??= {};
      const conditions = (p.status.conditions ?? []).filter((c) => c.type !== "Ready");
      conditions.push({ type: "Ready", status: ready ? "True" : "False" });
      p.status.conditions = conditions;
    });
  }

  /** Deletes a pod (DELETED). @throws Error when there is no such pod. */
  deletePod(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const old = this.pods.get(key);
    if (!old) throw new Error(`pod ${key} not found`);
    this.record("DELETED", key, clone(old));
  }

  /** The pods now, sorted by namespace/name. */
  listPods(): FakePod[] {
    return [...this.pods.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, p]) => clone(p));
  }

  /**
   * Ends every open watch stream: "end" closes it cleanly (as the API server
   * does when a watch's timeout runs out); "reset" destroys the connection
   * mid-stream (a network failure, a restarted API server).
   */
  dropWatches(how: "end" | "reset" = "reset"): void {
    for (const w of this.watchers) {
      if (how === "end") w.res.end();
      else w.res.destroy();
    }
    this.watchers.clear();
  }

  /**
   * Forgets the watch history up to now: a watch from an older
   * resourceVersion gets 410 Gone (the client must list again).
   */
  compact(): void {
    this.compactedRv = this.rv;
    this.history.length = 0;
  }

  /** Sends a BOOKMARK event with the current resourceVersion to the streams that allow bookmarks. */
  bookmark(): void {
    for (const w of this.watchers) {
      if (!w.bookmarks) continue;
      this.send(w, {
        type: "BOOKMARK",
        object: { kind: "Pod", apiVersion: "v1", metadata: { resourceVersion: this.resourceVersion } },
      });
    }
  }

  /** Adds a StatefulSet (only its scale is served) with `replicas` replicas. */
  addStatefulSet(namespace: string, name: string, replicas: number): void {
    this.statefulSets.set(`${namespace}/${name}`, { namespace, name, replicas, rv: ++this.rv });
  }

  /** A StatefulSet's replicas now, or undefined when there is none. */
  replicasOf(namespace: string, name: string): number | undefined {
    return this.statefulSets.get(`${namespace}/${name}`)?.replicas;
  }

  /** Closes the server and every open watch. */
  async close(): Promise<void> {
    this.dropWatches("reset");
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
  }

  private record(type: StoredEvent["type"], key: string, pod: FakePod): FakePod {
    pod.metadata.resourceVersion = String(++this.rv);
    if (type === "DELETED") this.pods.delete(key);
    else this.pods.set(key, pod);
    const e: StoredEvent = { type, rv: this.rv, pod };
    this.history.push(e);
    for (const w of this.watchers) this.deliver(w, e);
    return clone(pod);
  }

  private deliver(w: Watcher, e: StoredEvent): void {
    if (e.pod.metadata.namespace !== w.namespace || !w.selector(e.pod.metadata.labels ?? {})) return;
    this.send(w, { type: e.type, object: { kind: "Pod", apiVersion: "v1", ...e.pod } });
  }

  private send(w: Watcher, event: unknown): void {
    w.res.write(JSON.stringify(event) + "\n");
  }

  private status(res: ServerResponse, code: number, reason: string, message: string, details?: object): void {
    this.json(res, code, {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message,
      reason,
      ...(details ? { details } : {}),
      code,
    });
  }

  private json(res: ServerResponse, code: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(code, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
    res.end(text);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.url);
    const query = Object.fromEntries(url.searchParams);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString("utf8");
    const contentType = req.headers["content-type"]?.split(";")[0]?.trim();
    const entry: FakeKubeRequest = {
      method: req.method ?? "GET",
      path: url.pathname,
      query,
      contentType,
      body: raw === "" ? undefined : (JSON.parse(raw) as unknown),
      status: 0,
    };
    this.requests.push(entry);
    const writeHead = res.writeHead.bind(res) as (...a: unknown[]) => ServerResponse;
    (res as { writeHead: unknown }).writeHead = (code: number, ...rest: unknown[]) => {
      entry.status = code;
      return writeHead(code, ...rest);
    };

    let m: RegExpExecArray | null;
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname)) && req.method === "GET") {
      const namespace = decodeURIComponent(m[1]!);
      let selector: (l: Record<string, string>) => boolean;
      try {
        selector = parseLabelSelector(query["labelSelector"] ?? "");
      } catch (e) {
        this.status(res, 400, "BadRequest", (e as Error).message);
        return;
      }
      if (query["watch"] === "true" || query["watch"] === "1") this.watch(namespace, selector, query, res);
      else {
        const items = this.listPods().filter(
          (p) => p.metadata.namespace === namespace && selector(p.metadata.labels ?? {}),
        );
        this.json(res, 200, {
          kind: "PodList",
          apiVersion: "v1",
          metadata: { resourceVersion: this.resourceVersion },
          items,
        });
      }
      return;
    }
    if ((m = /^\/apis\/apps\/v1\/namespaces\/([^/]+)\/statefulsets\/([^/]+)\/scale$/.exec(url.pathname))) {
      const [namespace, name] = [decodeURIComponent(m[1]!), decodeURIComponent(m[2]!)];
      const sts = this.statefulSets.get(`${namespace}/${name}`);
      if (!sts) {
        this.status(res, 404, "NotFound", `statefulsets.apps "${name}" not found`, {
          name,
          group: "apps",
          kind: "statefulsets",
        });
        return;
      }
      if (req.method === "PATCH") {
        const replicas = this.patchReplicas(sts.replicas, contentType, entry.body);
        if (typeof replicas === "string") {
          this.status(res, replicas.startsWith("the server rejected") ? 422 : 415, "BadRequest", replicas);
          return;
        }
        sts.replicas = replicas;
        sts.rv = ++this.rv;
      } else if (req.method !== "GET") {
        this.status(res, 405, "MethodNotAllowed", `${req.method} is not served on ${url.pathname}`);
        return;
      }
      this.json(res, 200, {
        kind: "Scale",
        apiVersion: "autoscaling/v1",
        metadata: { name, namespace, resourceVersion: String(sts.rv) },
        spec: { replicas: sts.replicas },
        status: { replicas: sts.replicas, selector: `statefulset=${name}` },
      });
      return;
    }
    this.status(
      res,
      404,
      "NotFound",
      `the server could not find the requested resource (${req.method} ${url.pathname})`,
    );
  }

  /** The replicas after a patch, or why the patch is refused. */
  private patchReplicas(current: number, contentType: string | undefined, body: unknown): number | string {
    const spec = (b: unknown) => (b as { spec?: { replicas?: unknown } } | undefined)?.spec;
    let replicas: unknown = current;
    if (contentType === "application/json-patch+json") {
      if (!Array.isArray(body)) return "the server rejected our request: a JSON patch must be an array";
      for (const op of body as { op?: string; path?: string; value?: unknown }[]) {
        if (op.path !== "/spec/replicas") return `the server rejected our request: path ${op.path} is not served`;
        if (op.op === "test") {
          if (op.value !== replicas) return `the server rejected our request: test of /spec/replicas failed`;
        } else if (op.op === "replace" || op.op === "add") replicas = op.value;
        else return `the server rejected our request: op ${op.op} is not served`;
      }
    } else if (
      contentType === "application/merge-patch+json" ||
      contentType === "application/strategic-merge-patch+json"
    ) {
      const s = spec(body);
      if (s && "replicas" in s) replicas = s.replicas;
    } else return `content type ${contentType} is not served`;
    if (typeof replicas !== "number" || !Number.isInteger(replicas) || replicas < 0) {
      return `the server rejected our request: spec.replicas must be an integer >= 0, got ${JSON.stringify(replicas)}`;
    }
    return replicas;
  }

  private watch(
    namespace: string,
    selector: (l: Record<string, string>) => boolean,
    query: Record<string, string>,
    res: ServerResponse,
  ): void {
    res.writeHead(200, { "Content-Type": "application/json", "Transfer-Encoding": "chunked" });
    // The client waits for the headers before it reads events: send them now.
    res.flushHeaders();
    const w: Watcher = { namespace, selector, res, bookmarks: query["allowWatchBookmarks"] === "true" };
    const from = query["resourceVersion"];
    if (from === undefined || from === "" || from === "0") {
      for (const p of this.listPods()) this.deliver(w, { type: "ADDED", rv: this.rv, pod: p });
    } else {
      const rv = Number(from);
      if (!Number.isInteger(rv) || rv < this.compactedRv) {
        this.send(w, {
          type: "ERROR",
          object: {
            kind: "Status",
            apiVersion: "v1",
            metadata: {},
            status: "Failure",
            message: `too old resource version: ${from} (${this.compactedRv})`,
            reason: "Expired",
            code: 410,
          },
        });
        res.end();
        return;
      }
      for (const e of this.history) if (e.rv > rv) this.deliver(w, e);
    }
    this.watchers.add(w);
    res.on("close", () => this.watchers.delete(w));
  }
}

/** What {@link tesseraNodePod} builds. */
export interface TesseraNodePodOptions {
  /** The pod's name, e.g. "t-tessera-memory-default-0". */
  name: string;
  namespace: string;
  role: NodeRole;
  /** @default "default" */
  pool?: string;
  /** Helm release. @default "t" */
  release?: string;
  podIP?: string;
  /** The container port named "grpc"; none when undefined. */
  grpcPort?: number;
  /** The headless Service (pod.spec.subdomain); hostname is the pod name. None when undefined. */
  subdomain?: string;
  /** @default false */
  ready?: boolean;
  /** Label with only `app.kubernetes.io/component` (no `tessera.io/role`). @default false */
  componentLabelOnly?: boolean;
}

/** A node pod labelled as helm/tessera's node-pools.yaml labels them. */
export function tesseraNodePod(o: TesseraNodePodOptions): FakePod {
  const release = o.release ?? "t";
  const pool = o.pool ?? "default";
  return {
    metadata: {
      name: o.name,
      namespace: o.namespace,
      labels: {
        "app.kubernetes.io/name": "tessera",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/part-of": "tessera",
        "app.kubernetes.io/component": `${o.role}-node`,
        ...(o.componentLabelOnly ? {} : { "tessera.io/role": o.role }),
        "tessera.io/pool": pool,
      },
    },
    spec: {
      ...(o.subdomain !== undefined ? { hostname: o.name, subdomain: o.subdomain } : {}),
      containers: [
        {
          name: `${o.role}-node`,
          ports: o.grpcPort === undefined ? [] : [{ name: "grpc", containerPort: o.grpcPort, protocol: "TCP" }],
        },
      ],
    },
    status: {
      phase: "Running",
      ...(o.podIP !== undefined ? { podIP: o.podIP } : {}),
      conditions: [{ type: "Ready", status: o.ready ? "True" : "False" }],
    },
  };
}
