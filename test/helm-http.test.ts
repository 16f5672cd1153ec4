/**
 * Issue 14, item 7 (first part): the chart's HTTP API and ServiceMonitor.
 * `coordinator.httpPort` (default 8000) reaches the coordinator as
 * `--http-port`, a container port and the coordinator Service's port
 * `http`; 0 or null leaves all three out. `serviceMonitor.enabled` (off by
 * default) renders a monitoring.coreos.com/v1 ServiceMonitor, validated
 * against the Prometheus Operator's schema, scraping `/metrics` on the http
 * port over https with the release's CA; it refuses to render without the
 * http port or metrics. `helm lint --strict` passes with each.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { byKind, chart, helm, one, podSpec, PREFIX, render, type Manifest } from "./helm-chart.js";

const COORDINATOR = `${PREFIX}-coordinator`;
const ON = [
  "--set",
  "coordinator.httpPort=8080",
  "--set",
  "coordinator.service.httpPort=80",
  "--set",
  "serviceMonitor.enabled=true",
  "--set",
  "serviceMonitor.interval=15s",
  "--set",
  "serviceMonitor.labels.release=kube-prometheus-stack",
];

/** The coordinator's args, container ports and Service ports of a rendering. */
function coordinatorOf(docs: Manifest[]) {
  const c = podSpec(one(docs, "Deployment", COORDINATOR)).containers[0]!;
  return {
    args: c.args ?? [],
    ports: (c.ports ?? []).map((p) => `${p.name}:${p.containerPort}`),
    service: one(docs, "Service", COORDINATOR).spec!.ports!,
  };
}

test("helm lint --strict passes with the HTTP port off and with the ServiceMonitor on", async () => {
  for (const extra of [["--set", "coordinator.httpPort=0"], ["--set", "coordinator.httpPort=null"], ON]) {
    const run = await helm(["lint", "--strict", chart, ...extra]);
    assert.equal(run.code, 0, `${extra.join(" ")}: ${run.stdout}${run.stderr}`);
  }
});

test("coordinator.httpPort: --http-port, a container port and the Service's port http; 0 or null: none", async () => {
  const on = coordinatorOf(await render(undefined, ON));
  assert.ok(on.args.includes("--http-port=8080"), on.args.join(" "));
  assert.deepEqual(on.ports, ["grpc:7300", "http:8080", "metrics:9464"]);
  assert.deepEqual(
    on.service.find((p) => p.name === "http"),
    { name: "http", port: 80, targetPort: "http", protocol: "TCP", appProtocol: "https" },
  );
  for (const off of ["0", "null"]) {
    const docs = await render(undefined, ["--set", `coordinator.httpPort=${off}`]);
    const c = coordinatorOf(docs);
    assert.ok(!c.args.some((a) => a.startsWith("--http-port")), `${off}: ${c.args.join(" ")}`);
    assert.deepEqual(c.ports, ["grpc:7300", "metrics:9464"], off);
    assert.deepEqual(
      c.service.map((p) => p.name),
      ["grpc"],
      off,
    );
  }
});

test("serviceMonitor.enabled: a ServiceMonitor of the coordinator Service's http port /metrics over https; off by default", async () => {
  assert.deepEqual(byKind(await render(), "ServiceMonitor"), []);
  const docs = await render(undefined, ON);
  const sm = one(docs, "ServiceMonitor", COORDINATOR) as unknown as {
    apiVersion: string;
    metadata: { labels: Record<string, string> };
    spec: Record<string, unknown>;
  };
  assert.equal(sm.apiVersion, "monitoring.coreos.com/v1");
  assert.equal(sm.metadata.labels["release"], "kube-prometheus-stack");
  assert.deepEqual(sm.spec, {
    namespaceSelector: { matchNames: ["ns"] },
    selector: {
      matchLabels: {
        "app.kubernetes.io/name": "tessera",
        "app.kubernetes.io/instance": "t",
        "app.kubernetes.io/component": "coordinator",
      },
    },
    endpoints: [
      {
        port: "http",
        path: "/metrics",
        scheme: "https",
        interval: "15s",
        tlsConfig: {
          ca: { secret: { name: "tessera-tls", key: "ca.pem" } },
          serverName: `${COORDINATOR}.ns.svc.cluster.local`,
        },
      },
    ],
  });
  // It selects the coordinator Service (its labels), which has the port it names.
  const svc = one(docs, "Service", COORDINATOR);
  const want = (sm.spec["selector"] as { matchLabels: Record<string, string> }).matchLabels;
  for (const [k, v] of Object.entries(want)) assert.equal(svc.metadata.labels?.[k], v, k);
  const others = byKind(docs, "Service").filter(
    (s) => s !== svc && Object.entries(want).every(([k, v]) => s.metadata.labels?.[k] === v),
  );
  assert.deepEqual(others, [], "only the coordinator Service is selected");

  // Without the http port or without metrics there is nothing to scrape: helm says so.
  for (const [set, why] of [
    ["coordinator.httpPort=0", /needs coordinator\.httpPort/],
    ["metrics.port=0", /needs metrics\.port/],
  ] as const) {
    const run = await helm(["template", "t", chart, ...ON, "--set", set]);
    assert.equal(run.code, 1, set);
    assert.match(run.stderr, why);
  }
});
