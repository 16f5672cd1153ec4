// `tessera plan` end to end: the built CLI (npx tsc -b apps/cli) on an
// example cluster, JSON and table output, a checkpoint as --model, and a bad
// cluster file.
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runCli } from "./helpers.js";

const cluster = "examples/clusters/h100-ddr5-nvme.yaml";
const workload = ["--batch", "16", "--prompt-tokens", "3584", "--output-tokens", "512"];

interface PlanJson {
  best: {
    stages: { node: string; layers: [number, number] }[];
    batch: number;
    tokensPerSecondPerDollarHour: number;
    prediction: { pricePerHour: number; violations: string[] };
  };
  baselines: { name: string; ratio: number; plan: { tokensPerSecondPerDollarHour: number } }[];
  bindingConstraint: string;
}

test("tessera plan --json: a plan covering every layer, baselines with their ratios", async () => {
  const r = await runCli(["plan", "--cluster", cluster, "--model", "Llama-2-70B", ...workload, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as PlanJson;
  assert.equal(j.best.stages[0]!.layers[0], 0);
  assert.equal(j.best.stages.at(-1)!.layers[1], 80);
  assert.ok(j.best.batch <= 16);
  assert.deepEqual(j.best.prediction.violations, []);
  assert.deepEqual(
    j.baselines.map((b) => b.name),
    ["gpu-only", "gpu+host-offload", "gpu-only-any-budget"],
  );
  for (const b of j.baselines)
    assert.ok(Math.abs(b.ratio - j.best.tokensPerSecondPerDollarHour / b.plan.tokensPerSecondPerDollarHour) < 1e-9);
  assert.ok(j.bindingConstraint.length > 0);
});

test("tessera plan: table output; a llama2.c checkpoint as --model", async () => {
  const r = await runCli([
    "plan",
    "--cluster",
    cluster,
    "--model",
    "../shared/models/stories260K.bin",
    ...workload,
    "--latency-ms",
    "50",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^plan: gpu#0\[0-5\)/m); // stories260K has 5 layers: one GPU holds them
  assert.match(r.stdout, /^gpu-only +[0-9.]+ /m);
  assert.match(r.stdout, /^gpu\+host-offload +[0-9.]+ /m);
  assert.match(r.stdout, /not measurements/);
});

test("tessera plan: a bad cluster file fails naming the file and the field", async () => {
  const bad = join(tmpdir(), `tessera-plan-${process.pid}.yaml`);
  await writeFile(bad, "pools:\n  - { kind: gpu, count: 2, part: h100-sxm-80gb, price: cheap }\n");
  const r = await runCli(["plan", "--cluster", bad, "--model", "Llama-2-7B", ...workload]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: pools\\[0\\]\\.price: `));
  const m = await runCli(["plan", "--cluster", cluster, "--model", "Llama-3-8B", ...workload]);
  assert.equal(m.code, 1);
  assert.match(m.stderr, /Llama-2-7B, Llama-2-13B, Llama-2-70B/);
});
