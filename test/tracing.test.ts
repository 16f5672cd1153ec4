/**
 * Issue 6, tracing: a batch job submitted through NATS JetStream (the real
 * server on 127.0.0.1:4222, a random prefix) runs on a local cluster of
 * child processes (coordinator, gpu-, memory- and storage-node) that export
 * spans over OTLP/HTTP (protobuf) to a receiver in this test, which decodes
 * the real ExportTraceServiceRequest messages (the opentelemetry-proto
 * definitions below, parsed by protobufjs). The spans must form one trace:
 * submit -> queue -> job run -> Generate -> batch -> prefill/decode steps ->
 * gpu-node forward -> micro-batch -> layer -> Attend on the memory- and the
 * storage-node, with one decode step in TESSERA_TRACE_STEP_EVERY traced.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import protobuf from "protobufjs";
import { JobStore, connectNats, type JobState } from "@tessera/nats";
import { tesseraJobFile } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";
import { startTelemetry } from "@tessera/telemetry";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const STEP_EVERY = 4;

/**
 * The messages of opentelemetry-proto v1 (collector/trace/v1/trace_service.proto,
 * trace/v1/trace.proto, resource/v1/resource.proto, common/v1/common.proto)
 * that an ExportTraceServiceRequest holds, with their field numbers.
 */
const OTLP_TRACE_PROTO = `
syntax = "proto3";
package opentelemetry.proto;
message AnyValue {
  oneof value {
    string string_value = 1; bool bool_value = 2; int64 int_value = 3; double double_value = 4;
    ArrayValue array_value = 5; KeyValueList kvlist_value = 6; bytes bytes_value = 7;
  }
}
message ArrayValue { repeated AnyValue values = 1; }
message KeyValueList { repeated KeyValue values = 1; }
message KeyValue { string key = 1; AnyValue value = 2; }
message InstrumentationScope { string name = 1; string version = 2; repeated KeyValue attributes = 3; uint32 dropped_attributes_count = 4; }
message Resource { repeated KeyValue attributes = 1; uint32 dropped_attributes_count = 2; }
message ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
message ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; string schema_url = 3; }
message ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; string schema_url = 3; }
message Span {
  bytes trace_id = 1; bytes span_id = 2; string trace_state = 3; bytes parent_span_id = 4; fixed32 flags = 16;
  string name = 5; int32 kind = 6; fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8;
  repeated KeyValue attributes = 9; uint32 dropped_attributes_count = 10;
  repeated Event events = 11; uint32 dropped_events_count = 12;
  repeated Link links = 13; uint32 dropped_links_count = 14; Status status = 15;
  message Event { fixed64 time_unix_nano = 1; string name = 2; repeated KeyValue attributes = 3; uint32 dropped_attributes_count = 4; }
  message Link { bytes trace_id = 1; bytes span_id = 2; string trace_state = 3; repeated KeyValue attributes = 4; uint32 dropped_attributes_count = 5; fixed32 flags = 6; }
}
message Status { string message = 2; int32 code = 3; }
`;
const ExportTraceServiceRequest = protobuf
  .parse(OTLP_TRACE_PROTO)
  .root.lookupType("opentelemetry.proto.ExportTraceServiceRequest");

type Attr = string | number | boolean | Attr[];
interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentId: string;
  name: string;
  attributes: Record<string, Attr>;
}

function value(v: Record<string, unknown> | undefined): Attr {
  if (!v) return "";
  if ("stringValue" in v) return v["stringValue"] as string;
  if ("boolValue" in v) return v["boolValue"] as boolean;
  if ("intValue" in v) return Number(v["intValue"]);
  if ("doubleValue" in v) return v["doubleValue"] as number;
  if ("arrayValue" in v) return ((v["arrayValue"] as { values?: Record<string, unknown>[] }).values ?? []).map(value);
  return "";
}

function attrs(kvs: { key: string; value?: Record<string, unknown> }[] | undefined): Record<string, Attr> {
  return Object.fromEntries((kvs ?? []).map((kv) => [kv.key, value(kv.value)]));
}

const hex = (b: Uint8Array | undefined) => Buffer.from(b ?? []).toString("hex");

/** An OTLP/HTTP receiver on a loopback port: POST /v1/traces with protobuf bodies. */
async function startReceiver(): Promise<{ server: Server; endpoint: string; spans: ReceivedSpan[]; requests: number }> {
  const state = { spans: [] as ReceivedSpan[], requests: 0 };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.url === "/v1/traces") {
        assert.equal(req.headers["content-type"], "application/x-protobuf");
        state.requests++;
        const msg = ExportTraceServiceRequest.toObject(ExportTraceServiceRequest.decode(Buffer.concat(chunks)), {
          longs: String,
        }) as { resourceSpans?: any[] };
        for (const rs of msg.resourceSpans ?? []) {
          const service = String(attrs(rs.resource?.attributes)["service.name"]);
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              state.spans.push({
                service,
                traceId: hex(s.traceId),
                spanId: hex(s.spanId),
                parentId: hex(s.parentSpanId),
                name: s.name,
                attributes: { ...attrs(s.attributes), ...prefixed(attrs(rs.resource?.attributes)) },
              });
            }
          }
        }
      }
      // An empty ExportTraceServiceResponse: everything accepted.
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    endpoint: `http://127.0.0.1:${port}`,
    get spans() {
      return state.spans;
    },
    get requests() {
      return state.requests;
    },
  };
}

/** Resource attributes, kept beside the span's own as "resource:<key>". */
function prefixed(a: Record<string, Attr>): Record<string, Attr> {
  return Object.fromEntries(Object.entries(a).map(([k, v]) => [`resource:${k}`, v]));
}

test("a batch job through NATS is one trace from submit to the Attend calls on memory- and storage-nodes", async (t) => {
  const receiver = await startReceiver();
  t.after(() => new Promise<void>((resolve) => receiver.server.close(() => resolve())));
  const otelEnv = {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
    OTEL_BSP_SCHEDULE_DELAY: "200",
    OTEL_METRICS_EXPORTER: "none",
    OTEL_LOGS_EXPORTER: "none",
    TESSERA_TRACE_STEP_EVERY: String(STEP_EVERY),
    TESSERA_POOL: "test-pool",
  };
  const saved = Object.fromEntries(Object.keys(otelEnv).map((k) => [k, process.env[k]]));
  Object.assign(process.env, otelEnv);
  // This process submits, as `tessera jobs submit` would: its span is the root.
  const telemetry = await startTelemetry({ serviceName: "tessera-cli", role: "cli", nodeId: "test" });
  assert.equal(telemetry.enabled, true);
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "tracing-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  // Children copy this process's environment (OTEL_* included) when they start.
  const cluster = await startTestCluster({
    flags: { coordinator: ["--nats", SERVERS, "--nats-prefix", prefix, "--max-batch", "4"] },
  });
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  let end: JobState | undefined;
  try {
    const input = [
      tesseraJobFile(2, { kv: "memory" }),
      tesseraJobFile(2, { kv: "storage" }).replace(/"p(\d)"/g, '"s$1"'),
    ].join("");
    await store.submit({ jobId: "traced", input: new TextEncoder().encode(input), sampling: { maxTokens: 12 } });
    for await (const s of store.watch("traced")) end = s;
  } finally {
    // SIGTERM: each child drains, then flushes its spans (telemetry.shutdown()).
    await cluster.stop();
    await telemetry.shutdown();
  }
  assert.equal(end?.status, "completed", end?.error);
  assert.equal(end?.promptsDone, 4);

  const all = receiver.spans;
  const submit = all.filter((s) => s.name === "tessera.job.submit");
  assert.equal(submit.length, 1, "one submit span");
  const traceId = submit[0]!.traceId;
  const spans = all.filter((s) => s.traceId === traceId);
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const named = (name: string) => spans.filter((s) => s.name === name);
  const one = (name: string) => {
    const found = named(name);
    assert.equal(found.length, 1, `one ${name} span in the trace, got ${found.length}`);
    return found[0]!;
  };
  const parentOf = (s: ReceivedSpan) => byId.get(s.parentId);
  const assertParent = (child: ReceivedSpan, names: string[]) =>
    assert.ok(
      names.includes(parentOf(child)?.name ?? "(none)"),
      `${child.service} ${child.name}: parent ${parentOf(child)?.name ?? "(missing)"}, expected ${names.join(" or ")}`,
    );

  // Every service, each under its own resource.
  assert.deepEqual([...new Set(spans.map((s) => s.service))].sort(), [
    "tessera-cli",
    "tessera-coordinator",
    "tessera-gpu-node",
    "tessera-memory-node",
    "tessera-storage-node",
  ]);
  for (const s of spans.filter((x) => x.service !== "tessera-cli")) {
    assert.equal(s.attributes["resource:tessera.pool"], "test-pool");
    assert.equal(s.attributes["resource:tessera.role"], s.service.replace(/^tessera-/, "").replace(/-node$/, ""));
  }

  // submit -> queue -> run -> Generate -> batch
  const queue = one("tessera.job.queue");
  assertParent(queue, ["tessera.job.submit"]);
  assert.equal(queue.attributes["tessera.job_id"], "traced");
  const run = one("tessera.job.run");
  assertParent(run, ["tessera.job.queue"]);
  assert.equal(run.service, "tessera-coordinator");
  const gen = one("tessera.v1.Coordinator/Generate");
  assertParent(gen, ["tessera.job.run"]);
  const batch = one("tessera.batch");
  assertParent(batch, ["tessera.v1.Coordinator/Generate"]);
  assert.equal(batch.attributes["tessera.batch.prompts"], 4);
  assert.equal(batch.attributes["tessera.batch.completion_tokens"], end!.completionTokens);

  // GenAI spans: one "text_completion <model>" per prompt, under the batch, beside the step spans.
  const genai = spans.filter((s) => s.attributes["gen_ai.operation.name"] === "text_completion");
  assert.equal(genai.length, 4, "one GenAI span per prompt");
  for (const g of genai) {
    assertParent(g, ["tessera.batch"]);
    assert.equal(g.name, `text_completion ${String(g.attributes["gen_ai.request.model"])}`);
    assert.equal(g.attributes["gen_ai.request.max_tokens"], 12);
    assert.ok(Number(g.attributes["gen_ai.usage.input_tokens"]) > 0);
    assert.deepEqual(g.attributes["gen_ai.response.finish_reasons"], ["length"]);
  }
  assert.equal(
    genai.reduce((n, g) => n + Number(g.attributes["gen_ai.usage.output_tokens"]), 0),
    end!.completionTokens,
  );

  // KV caches opened on both attention roles, under the batch.
  const opens = named("tessera.v1.Attention/OpenSequence");
  assert.deepEqual([...new Set(opens.map((s) => s.service))].sort(), ["tessera-memory-node", "tessera-storage-node"]);
  for (const o of opens) assertParent(o, ["tessera.batch"]);

  // Steps: every prefill step, and decode steps 0, N, 2N, ... only.
  const prefill = named("tessera.prefill_step");
  const decode = named("tessera.decode_step");
  assert.ok(prefill.length >= 1, "a prefill step");
  for (const s of [...prefill, ...decode]) assertParent(s, ["tessera.batch"]);
  for (const d of decode) assert.equal(Number(d.attributes["tessera.step.decode_index"]) % STEP_EVERY, 0);
  const decodeSteps = Number(batch.attributes["tessera.decode.steps"]);
  assert.equal(decode.length, Math.ceil(decodeSteps / STEP_EVERY), `${decodeSteps} decode steps, one in ${STEP_EVERY}`);

  // One gpu-node forward per traced step (unsampled steps leave no span anywhere).
  const forwards = named("tessera.gpu.forward");
  assert.equal(forwards.length, prefill.length + decode.length);
  for (const f of forwards) {
    assertParent(f, ["tessera.prefill_step", "tessera.decode_step"]);
    assert.equal(f.service, "tessera-gpu-node");
    assert.equal(f.attributes["tessera.step_id"], parentOf(f)!.attributes["tessera.step_id"]);
    const start = Number(f.attributes["tessera.layer_start"]);
    const endLayer = Number(f.attributes["tessera.layer_end"]);
    assert.equal(start, 0);
    for (const mb of spans.filter((s) => s.parentId === f.spanId)) {
      assert.equal(mb.name, "tessera.gpu.micro_batch");
      const layers = spans.filter((s) => s.parentId === mb.spanId);
      assert.deepEqual(
        layers.map((l) => l.attributes["tessera.layer"]).sort((a, b) => Number(a) - Number(b)),
        Array.from({ length: endLayer - start }, (_, i): number => start + i),
        "one layer span per layer of the stage",
      );
      for (const l of layers) assert.equal(l.name, "tessera.gpu.layer");
    }
  }

  // Attend calls on both attention roles, each under a gpu-node layer span of its layer.
  const attends = named("tessera.attention.attend");
  assert.deepEqual([...new Set(attends.map((s) => s.service))].sort(), ["tessera-memory-node", "tessera-storage-node"]);
  for (const a of attends) {
    assertParent(a, ["tessera.gpu.layer"]);
    assert.equal(a.attributes["tessera.layer"], parentOf(a)!.attributes["tessera.layer"]);
    assert.ok(Number(a.attributes["tessera.wire.bytes_received"]) > 0);
  }
  const layerSpans = named("tessera.gpu.layer");
  const attendsPerLayer = layerSpans.map((l) => attends.filter((a) => a.parentId === l.spanId).length);
  assert.deepEqual(
    attendsPerLayer,
    layerSpans.map((l) => Number(l.attributes["tessera.attention.nodes"])),
    "one Attend span per attention node a layer called",
  );
});
