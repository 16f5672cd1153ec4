// The `--kubernetes` node discovery (k8s-discovery.ts) with the real
// @kubernetes/client-node talking HTTP to a fake Kubernetes API server on
// loopback (packages/testing/src/fake-kube-api.ts): pods added, Ready, not
// Ready and deleted; a watch the server drops mid-stream; 410 Gone.
import assert from "node:assert/strict";
import { test, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { KubeConfig } from "@kubernetes/client-node";
import { FakeKubeApi, tesseraNodePod } from "../../../packages/testing/src/fake-kube-api.js";
import {
  KubernetesDiscoveryError,
  watchKubernetes,
  type KubernetesNodeEvent,
  type KubernetesWatcher,
} from "../src/discovery/k8s-discovery.js";

const NS = "tessera";
const SELECTOR = "app.kubernetes.io/part-of=tessera";
const dns = (pod: string, svc: string, port: number) => `${pod}.${svc}.${NS}.svc.cluster.local:${port}`;

async function start(t: TestContext): Promise<FakeKubeApi> {
  const api = await FakeKubeApi.start();
  t.after(() => api.close());
  return api;
}

/** Starts a discovery on `api`; events and log lines are collected. */
async function discover(t: TestContext, api: FakeKubeApi) {
  const events: string[] = [];
  const logs: string[] = [];
  const kc = new KubeConfig();
  kc.loadFromString(api.kubeconfig(NS));
  const watcher: KubernetesWatcher = await watchKubernetes({
    kubeconfig: kc,
    labelSelector: SELECTOR,
    retryMs: 20,
    onEvent: (e: KubernetesNodeEvent) => events.push(`${e.kind} ${e.role} ${e.address} ${e.pod} ${e.pool}`),
    log: (line) => logs.push(line),
  });
  t.after(() => watcher.stop());
  return { events, logs, watcher };
}

/** Waits (up to 10 s, a hang guard, not a speed bound) until `cond` holds. */
async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await sleep(10);
  assert.ok(cond(), `timed out waiting for ${what}`);
}

const watchRequests = (api: FakeKubeApi) => api.requests.filter((r) => r.query["watch"] === "true");
const listRequests = (api: FakeKubeApi) =>
  api.requests.filter((r) => r.path === `/api/v1/namespaces/${NS}/pods` && r.query["watch"] === undefined);

test("discovery reports node pods joining, lost, back and left in order, with the role and address of each", async (t) => {
  const api = await start(t);
  // Ready at start, IP only, grpc port 9000.
  api.addPod(
    tesseraNodePod({ name: "g-0", namespace: NS, role: "gpu", podIP: "10.0.0.5", grpcPort: 9000, ready: true }),
  );
  // Ready, only the component label, no grpc port: the storage default 7303.
  api.addPod(
    tesseraNodePod({
      name: "s-0",
      namespace: NS,
      role: "storage",
      pool: "nvme",
      podIP: "10.0.0.6",
      componentLabelOnly: true,
      ready: true,
    }),
  );
  // Not Ready yet, with a stable DNS name.
  api.addPod(
    tesseraNodePod({
      name: "t-tessera-memory-default-0",
      namespace: NS,
      role: "memory",
      subdomain: "t-tessera-memory-default",
      podIP: "10.0.0.7",
      grpcPort: 7302,
    }),
  );
  // Matches the selector but has no role: logged once, ignored.
  api.addPod({
    metadata: {
      name: "coord-0",
      namespace: NS,
      labels: { "app.kubernetes.io/part-of": "tessera", "tessera.io/role": "coordinator" },
    },
    status: { podIP: "10.0.0.9", conditions: [{ type: "Ready", status: "True" }] },
  });
  // Another namespace and another selector: never seen.
  api.addPod(tesseraNodePod({ name: "g-9", namespace: "other", role: "gpu", podIP: "10.0.9.9", ready: true }));
  api.addPod({
    metadata: { name: "x-0", namespace: NS, labels: { "tessera.io/role": "gpu" } },
    status: { podIP: "10.0.0.10", conditions: [{ type: "Ready", status: "True" }] },
  });

  const { events, logs, watcher } = await discover(t, api);
  // The pods present at the start are reported before watchKubernetes resolves.
  assert.deepEqual(events, [
    "joined gpu 10.0.0.5:9000 tessera/g-0 default",
    "joined storage 10.0.0.6:7303 tessera/s-0 nvme",
  ]);
  assert.equal(logs.filter((l) => l.includes("coord-0")).length, 1);
  assert.match(
    logs.find((l) => l.includes("coord-0"))!,
    /pod tessera\/coord-0 .*has no tessera\.io\/role/,
  );
  assert.deepEqual(
    listRequests(api).map((r) => r.query["labelSelector"]),
    [SELECTOR],
  );

  const mem = dns("t-tessera-memory-default-0", "t-tessera-memory-default", 7302);
  api.setPodReady(NS, "t-tessera-memory-default-0", true);
  api.setPodReady(NS, "g-0", false);
  api.updatePod(NS, "coord-0", (p) => (p.status!.podIP = "10.0.0.11")); // still ignored, not logged again
  api.setPodReady(NS, "g-0", true);
  api.updatePod(NS, "s-0", (p) => (p.metadata.deletionTimestamp = "2025-01-01T00:00:00Z"));
  api.deletePod(NS, "s-0");
  api.deletePod(NS, "t-tessera-memory-default-0");
  await until("8 events", () => events.length >= 8);
  await sleep(50); // nothing more arrives
  assert.deepEqual(events, [
    "joined gpu 10.0.0.5:9000 tessera/g-0 default",
    "joined storage 10.0.0.6:7303 tessera/s-0 nvme",
    `joined memory ${mem} tessera/t-tessera-memory-default-0 default`,
    "lost gpu 10.0.0.5:9000 tessera/g-0 default",
    "back gpu 10.0.0.5:9000 tessera/g-0 default",
    "lost storage 10.0.0.6:7303 tessera/s-0 nvme",
    "left storage 10.0.0.6:7303 tessera/s-0 nvme",
    `left memory ${mem} tessera/t-tessera-memory-default-0 default`,
  ]);
  assert.equal(logs.filter((l) => l.includes("coord-0")).length, 1);
  assert.deepEqual(watcher.nodes(), [{ pod: "tessera/g-0", role: "gpu", address: "10.0.0.5:9000", up: true }]);
  // One list, one watch from the list's resourceVersion, with the selector.
  assert.equal(listRequests(api).length, 1);
  assert.deepEqual(
    watchRequests(api).map((r) => r.query["labelSelector"]),
    [SELECTOR],
  );
});

test("a watch the server drops mid-stream resumes from the last resourceVersion: nothing lost, nothing twice", async (t) => {
  const api = await start(t);
  api.addPod(tesseraNodePod({ name: "m-0", namespace: NS, role: "memory", podIP: "10.1.0.1", ready: true }));
  const { events, logs } = await discover(t, api);
  assert.deepEqual(events, ["joined memory 10.1.0.1:7302 tessera/m-0 default"]);
  await until("the watch", () => api.openWatches === 1);

  api.addPod(tesseraNodePod({ name: "m-1", namespace: NS, role: "memory", podIP: "10.1.0.2", ready: true }));
  await until("m-1 joined", () => events.length === 2);
  const seenRv = api.resourceVersion;

  // The connection is reset mid-stream; changes made while no watch is open.
  api.dropWatches("reset");
  api.setPodReady(NS, "m-0", false);
  api.addPod(tesseraNodePod({ name: "g-0", namespace: NS, role: "gpu", podIP: "10.1.0.3", ready: true }));
  await until("3 more events", () => events.length >= 4);
  await until("the watch again", () => api.openWatches === 1);

  // The server ends the stream cleanly (a watch timeout) and more changes come.
  const seenRv2 = api.resourceVersion;
  api.dropWatches("end");
  api.deletePod(NS, "m-1");
  api.setPodReady(NS, "m-0", true);
  await until("2 more events", () => events.length >= 6);
  await sleep(50);
  assert.deepEqual(events, [
    "joined memory 10.1.0.1:7302 tessera/m-0 default",
    "joined memory 10.1.0.2:7302 tessera/m-1 default",
    "lost memory 10.1.0.1:7302 tessera/m-0 default",
    "joined gpu 10.1.0.3:7301 tessera/g-0 default",
    "left memory 10.1.0.2:7302 tessera/m-1 default",
    "back memory 10.1.0.1:7302 tessera/m-0 default",
  ]);
  // Resumed from the resourceVersions last seen, without listing again.
  assert.equal(listRequests(api).length, 1);
  const rvs = watchRequests(api).map((r) => r.query["resourceVersion"]);
  assert.equal(rvs.length, 3);
  assert.deepEqual(rvs.slice(1), [seenRv, seenRv2]);
  // The reset was logged naming the API server and namespace; the clean end was not an error.
  const errors = logs.filter((l) => l.includes("retrying"));
  assert.equal(errors.length, 1, logs.join("\n"));
  assert.ok(errors[0]!.includes(`Kubernetes API ${api.url}, namespace tessera (${SELECTOR})`), errors[0]);
});

test("410 Gone after the history was compacted: lists again and reports what changed meanwhile", async (t) => {
  const api = await start(t);
  api.addPod(tesseraNodePod({ name: "m-0", namespace: NS, role: "memory", podIP: "10.2.0.1", ready: true }));
  api.addPod(tesseraNodePod({ name: "m-1", namespace: NS, role: "memory", podIP: "10.2.0.2", ready: true }));
  api.addPod(tesseraNodePod({ name: "m-2", namespace: NS, role: "memory", podIP: "10.2.0.3", ready: true }));
  const { events } = await discover(t, api);
  await until("the watch", () => api.openWatches === 1);
  const listRv = api.resourceVersion;

  api.dropWatches("end");
  api.deletePod(NS, "m-1");
  api.addPod(tesseraNodePod({ name: "s-0", namespace: NS, role: "storage", podIP: "10.2.0.4", ready: true }));
  api.setPodReady(NS, "m-2", false);
  api.compact();
  const relistRv = api.resourceVersion;
  await until("3 more events", () => events.length >= 6);
  await until("the watch again", () => api.openWatches === 1);
  api.setPodReady(NS, "m-2", true);
  await until("m-2 back", () => events.length >= 7);
  await sleep(50);
  assert.deepEqual(events, [
    "joined memory 10.2.0.1:7302 tessera/m-0 default",
    "joined memory 10.2.0.2:7302 tessera/m-1 default",
    "joined memory 10.2.0.3:7302 tessera/m-2 default",
    "left memory 10.2.0.2:7302 tessera/m-1 default",
    "lost memory 10.2.0.3:7302 tessera/m-2 default",
    "joined storage 10.2.0.4:7303 tessera/s-0 default",
    "back memory 10.2.0.3:7302 tessera/m-2 default",
  ]);
  // list, watch (410), list again, watch from the new list's resourceVersion.
  assert.equal(listRequests(api).length, 2);
  assert.deepEqual(
    watchRequests(api).map((r) => r.query["resourceVersion"]),
    [listRv, listRv, relistRv],
  );
});

test("discovery that cannot list pods names the API server, namespace and selector", async (t) => {
  const api = await FakeKubeApi.start();
  const kc = new KubeConfig();
  kc.loadFromString(api.kubeconfig("prod"));
  await api.close();
  await assert.rejects(
    watchKubernetes({ kubeconfig: kc, labelSelector: SELECTOR, onEvent: () => undefined, log: () => undefined }),
    (e: Error) => {
      assert.ok(e instanceof KubernetesDiscoveryError);
      assert.ok(
        e.message.startsWith(`Kubernetes API ${api.url}, namespace prod (${SELECTOR}): cannot list pods: `),
        e.message,
      );
      assert.match(e.message, /ECONNREFUSED/);
      return true;
    },
  );
  t.diagnostic("refused as expected");
});
