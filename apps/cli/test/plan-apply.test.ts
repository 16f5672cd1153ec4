// `tessera plan --apply` (plan-apply.ts): the pools' StatefulSets scaled
// through the real @kubernetes/client-node against a fake Kubernetes API
// server on loopback (packages/testing/src/fake-kube-api.ts).
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { KubeConfig } from "@kubernetes/client-node";
import { SHAPES, loadCluster, plan, type ClusterSpec, type Plan } from "@tessera/scheduler";
import { FakeKubeApi } from "../../../packages/testing/src/fake-kube-api.js";
import {
  StatefulSetNotFoundError,
  chartFullname,
  planApplyCommand,
  planRefusal,
  planReplicas,
  scaleStatefulSets,
  statefulSetName,
  type PoolReplicas,
} from "../src/commands/plan-apply.js";

const NS = "tessera";

async function fake(t: TestContext): Promise<{ api: FakeKubeApi; kc: KubeConfig }> {
  const api = await FakeKubeApi.start();
  t.after(() => api.close());
  const kc = new KubeConfig();
  kc.loadFromString(api.kubeconfig(NS));
  return { api, kc };
}

const patches = (api: FakeKubeApi) =>
  api.requests.filter((r) => r.method === "PATCH").map((r) => ({ path: r.path, type: r.contentType, body: r.body }));
const scalePath = (name: string) => `/apis/apps/v1/namespaces/${NS}/statefulsets/${name}/scale`;

test("planReplicas counts the distinct nodes of each pool holding a stage or a KV share; unused pools get 0", () => {
  const node = (pool: string, id: string) => ({ node: { pool, id } });
  const best = {
    placement: {
      stages: [node("gpu", "gpu#0"), node("gpu", "gpu#1")],
      kv: { mode: "nodes", headGroups: 2, shares: [node("mem", "mem#0"), node("mem", "mem#2"), node("mem", "mem#0")] },
    },
  } as unknown as Plan;
  const cluster = {
    pools: [
      { name: "gpu", kind: "gpu", nodes: [] },
      { name: "mem", kind: "memory", nodes: [] },
      { name: "nvme", kind: "storage", nodes: [] },
    ],
  } as unknown as ClusterSpec;
  assert.deepEqual(planReplicas(best, cluster), [
    { role: "gpu", pool: "gpu", replicas: 2, used: true },
    { role: "memory", pool: "mem", replicas: 2, used: true },
    { role: "storage", pool: "nvme", replicas: 0, used: false },
  ]);
});

test("--apply refuses a plan whose KV the runtime cannot hold, or that leaves no node to hold it, naming why", () => {
  const node = (pool: string, id: string) => ({ node: { pool, id } });
  const stages = [node("gpu", "gpu#0")];
  const cluster = {
    pools: [
      { name: "gpu", kind: "gpu", nodes: [] },
      { name: "mem", kind: "memory", nodes: [] },
      { name: "nvme", kind: "storage", nodes: [] },
    ],
  } as unknown as ClusterSpec;
  const planOf = (kv: unknown) => ({ placement: { stages, kv } }) as unknown as Plan;
  for (const [mode, where] of [
    ["gpu", "GPU"],
    ["host", "host"],
  ] as const) {
    const p = planOf({ mode });
    assert.equal(
      planRefusal(p, planReplicas(p, cluster)),
      `the plan keeps the KV cache in ${where} memory, which Tessera's runtime cannot run ` +
        "(it holds the KV on memory- and storage-nodes only)",
    );
  }
  // KV on nodes, but every attention pool scaled to 0 (no share holds a node).
  const empty = planOf({ mode: "nodes", headGroups: 1, shares: [] });
  assert.equal(
    planRefusal(empty, planReplicas(empty, cluster)),
    'the plan leaves no memory- or storage-node to hold the KV cache (it would scale memory pool "mem", storage pool "nvme" to 0)',
  );
  const ok = planOf({ mode: "nodes", headGroups: 1, shares: [node("nvme", "nvme#0")] });
  assert.equal(planRefusal(ok, planReplicas(ok, cluster)), undefined);
});

test("StatefulSet names follow the chart's fullname and --statefulset-pattern", () => {
  assert.equal(chartFullname("t"), "t-tessera");
  assert.equal(chartFullname("tessera-prod"), "tessera-prod");
  assert.equal(chartFullname("a-very-long-release-name-indeed"), "a-very-long-release-name-indee");
  assert.equal(
    statefulSetName("{fullname}-{role}-{pool}", { release: "t", role: "gpu", pool: "a100" }),
    "t-tessera-gpu-a100",
  );
  assert.equal(statefulSetName("{release}-{pool}", { release: "x", role: "gpu", pool: "p" }), "x-p");
  assert.throws(
    () => statefulSetName("{fullname}-{node}", { release: "t", role: "gpu", pool: "p" }),
    /--statefulset-pattern "\{fullname\}-\{node\}": unknown placeholder \{node\}/,
  );
});

test("scaling patches the scale of each pool's StatefulSet to the plan's replicas; --dry-run patches nothing", async (t) => {
  const { api, kc } = await fake(t);
  api.addStatefulSet(NS, "t-tessera-gpu-gpu", 1);
  api.addStatefulSet(NS, "t-tessera-memory-mem", 4);
  api.addStatefulSet(NS, "t-tessera-storage-nvme", 2);
  api.addStatefulSet("other", "t-tessera-gpu-gpu", 7);
  const pools: PoolReplicas[] = [
    { role: "gpu", pool: "gpu", replicas: 3, used: true },
    { role: "memory", pool: "mem", replicas: 4, used: true },
    { role: "storage", pool: "nvme", replicas: 0, used: false },
    { role: "storage", pool: "ssd", replicas: 0, used: false }, // unused and not deployed: skipped
  ];
  const dry = await scaleStatefulSets(pools, { kubeconfig: kc, release: "t", dryRun: true });
  const summary = (cs: typeof dry) => cs.map((c) => `${c.statefulSet} ${c.from}→${c.to} ${c.patched}`);
  const expected = [
    "t-tessera-gpu-gpu 1→3 true",
    "t-tessera-memory-mem 4→4 false",
    "t-tessera-storage-nvme 2→0 true",
    "t-tessera-storage-ssd undefined→0 false",
  ];
  assert.deepEqual(summary(dry), expected);
  assert.deepEqual(patches(api), []);
  assert.equal(api.replicasOf(NS, "t-tessera-gpu-gpu"), 1);

  const applied = await scaleStatefulSets(pools, { kubeconfig: kc, release: "t" });
  assert.deepEqual(summary(applied), expected);
  // JSON patches of /spec/replicas, only where the replicas differ, in pool order.
  assert.deepEqual(patches(api), [
    {
      path: scalePath("t-tessera-gpu-gpu"),
      type: "application/json-patch+json",
      body: [{ op: "replace", path: "/spec/replicas", value: 3 }],
    },
    {
      path: scalePath("t-tessera-storage-nvme"),
      type: "application/json-patch+json",
      body: [{ op: "replace", path: "/spec/replicas", value: 0 }],
    },
  ]);
  assert.deepEqual(
    [
      api.replicasOf(NS, "t-tessera-gpu-gpu"),
      api.replicasOf(NS, "t-tessera-memory-mem"),
      api.replicasOf(NS, "t-tessera-storage-nvme"),
      api.replicasOf("other", "t-tessera-gpu-gpu"),
    ],
    [3, 4, 0, 7],
  );
  // Applied again: nothing to change.
  const again = await scaleStatefulSets(pools, { kubeconfig: kc, release: "t" });
  assert.ok(again.every((c) => !c.patched));
  assert.equal(patches(api).length, 2);
});

test("a pool of the plan without a StatefulSet (404) is named and nothing is scaled", async (t) => {
  const { api, kc } = await fake(t);
  api.addStatefulSet(NS, "t-tessera-gpu-gpu", 1);
  const pools: PoolReplicas[] = [
    { role: "gpu", pool: "gpu", replicas: 2, used: true },
    { role: "memory", pool: "mem", replicas: 3, used: true },
  ];
  await assert.rejects(scaleStatefulSets(pools, { kubeconfig: kc, release: "t" }), (e: Error) => {
    assert.ok(e instanceof StatefulSetNotFoundError);
    assert.equal(e.statefulSet, "t-tessera-memory-mem");
    assert.ok(
      e.message.startsWith(
        `statefulset "t-tessera-memory-mem" not found in namespace "tessera" (Kubernetes API ${api.url}): ` +
          `the plan runs 3 node(s) of memory pool "mem" and nothing is scaled`,
      ),
      e.message,
    );
    return true;
  });
  assert.deepEqual(patches(api), []);
  assert.equal(api.replicasOf(NS, "t-tessera-gpu-gpu"), 1);
  const gets = api.requests.map((r) => `${r.method} ${r.path} ${r.status}`);
  assert.deepEqual(gets, [`GET ${scalePath("t-tessera-gpu-gpu")} 200`, `GET ${scalePath("t-tessera-memory-mem")} 404`]);
});

test("tessera plan --apply plans on the cluster file and scales its pools (kubeconfig file, --release)", async (t) => {
  const { api } = await fake(t);
  const dir = await mkdtemp(join(tmpdir(), "tessera-plan-apply-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, "kubeconfig");
  await writeFile(kubeconfig, api.kubeconfig(NS));
  const clusterFile = "examples/clusters/h100-ddr5-nvme.yaml";
  for (const [role, pool] of [
    ["gpu", "gpu"],
    ["memory", "mem"],
    ["storage", "nvme"],
  ])
    api.addStatefulSet(NS, `prod-tessera-${role}-${pool}`, 1);
  const workload = { batch: 16, promptTokens: 3584, outputTokens: 512, objective: "job" as const };
  // What the planner recommends on that cluster, computed here as the command does.
  const cluster = await loadCluster(clusterFile);
  const best = plan(SHAPES["Llama-2-70B"]!.shape, cluster, {
    maxBatch: workload.batch,
    promptTokens: workload.promptTokens,
    outputTokens: workload.outputTokens,
    objective: workload.objective,
  }).best!;
  const want = planReplicas(best, cluster);
  assert.ok(want[0]!.replicas > 1, "the plan uses several gpu-nodes");
  // Issue 13: the plan holds its KV on attention nodes, so some of their pools stay up.
  assert.ok(
    want.some((p) => p.role !== "gpu" && p.replicas > 0),
    JSON.stringify(want),
  );
  assert.equal(planRefusal(best, want), undefined);

  const out: string[] = [];
  t.mock.method(process.stdout, "write", (s: string) => (out.push(s), true));
  const flags = {
    cluster: clusterFile,
    model: "Llama-2-70B",
    ...workload,
    json: true,
    kubeconfig,
    release: "prod",
    statefulSetPattern: "{fullname}-{role}-{pool}",
  };
  assert.equal(await planApplyCommand({ ...flags, dryRun: true }), 0);
  assert.deepEqual(patches(api), []);
  assert.equal(await planApplyCommand({ ...flags, dryRun: false }), 0);
  t.mock.restoreAll();
  assert.deepEqual(
    want.map((p) => api.replicasOf(NS, `prod-tessera-${p.role}-${p.pool}`)),
    want.map((p) => p.replicas),
  );
  const json = JSON.parse(out.at(-1)!) as {
    plan: string;
    dryRun: boolean;
    changes: { statefulSet: string; to: number }[];
  };
  assert.equal(json.plan, best.summary);
  assert.equal(json.dryRun, false);
  assert.deepEqual(
    json.changes.map((c) => [c.statefulSet, c.to]),
    want.map((p) => [`prod-tessera-${p.role}-${p.pool}`, p.replicas]),
  );
});

test("tessera plan --apply on a cluster file with no memory- or storage-node fails naming why and scales nothing", async (t) => {
  const { api } = await fake(t);
  const dir = await mkdtemp(join(tmpdir(), "tessera-plan-apply-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, "kubeconfig");
  await writeFile(kubeconfig, api.kubeconfig(NS));
  const clusterFile = join(dir, "gpus.yaml");
  await writeFile(clusterFile, "pools:\n  - { name: gpu, kind: gpu, count: 8, part: h100-sxm-80gb }\n");
  api.addStatefulSet(NS, "prod-tessera-gpu-gpu", 1);
  await assert.rejects(
    planApplyCommand({
      cluster: clusterFile,
      model: "Llama-2-7B",
      batch: 16,
      promptTokens: 512,
      outputTokens: 128,
      objective: "job",
      json: true,
      kubeconfig,
      release: "prod",
      statefulSetPattern: "{fullname}-{role}-{pool}",
      dryRun: false,
    }),
    /the cluster has no memory- or storage-node to hold the KV cache \(Tessera keeps no KV on gpu-nodes\)/,
  );
  assert.deepEqual(patches(api), []);
  assert.equal(api.replicasOf(NS, "prod-tessera-gpu-gpu"), 1);
});
