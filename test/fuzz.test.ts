/**
 * Issue 5, item 5 ("limits and bad input"): a malformed message on any gRPC
 * stream closes that stream with INVALID_ARGUMENT and never crashes a node.
 *
 * Starts a real gpu-node (the bundled stories260K loaded), memory-node,
 * storage-node and coordinator in this process, and for a bounded time per
 * service sends every RPC of every tessera.v1 service (taken from the
 * service descriptors, so a new RPC without seeds fails this test) bytes
 * the client does not encode: random bytes, and valid or well-formed but
 * unacceptable messages (wrong dtypes, shapes that do not match the data,
 * empty ids, NaN floats, huge uint32s, enormous n_tokens, ...) mutated by
 * bit flips, truncation, inserted bytes and appended fields with extreme
 * values (protobuf's last-one-wins makes an appended scalar override the
 * seed's). Calls use grpc-js' generic client with identity serializers, so
 * the bytes reach the server's decoder as sent.
 *
 * Every call must end, within its deadline, with a status:
 * - a request (or, on a stream, any message) protobuf cannot decode:
 *   exactly INVALID_ARGUMENT, after one response per message before it;
 * - a request that decodes: OK or one of the codes its RPC documents for
 *   well-formed but unacceptable input (the tables below say which and
 *   why); on Forward and Attend streams a bad request is answered in-band
 *   (`error` of its response, the stream goes on), so the stream ends OK
 *   with one response per request and each `error.code` is one of the
 *   RPC's in-band codes. INTERNAL and UNKNOWN are never allowed.
 *
 * Afterwards every node still answers its grpc.health.v1 check (SERVING),
 * and a job still reproduces run.c's reference text with the KV cache on
 * the memory-node and on the storage-node.
 *
 * The PRNG is seeded (TESSERA_FUZZ_SEED, else the clock) and the seed is
 * printed; case k of an RPC depends only on the seed, so a failure names
 * the seed, the RPC and the case to replay.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { ScalarType, type DescMessage, type DescMethod, type MessageInitShape } from "@bufbuild/protobuf";
import { loadCheckpoint } from "@tessera/model";
import {
  Attention,
  AttendRequestSchema,
  AttendResponseSchema,
  CloseSequenceRequestSchema,
  Code,
  Coordinator,
  DType,
  ForwardRequestSchema,
  ForwardResponseSchema,
  GenerateRequestSchema,
  GpuNode,
  KvPlacement,
  LoadRequestSchema,
  ReleaseRequestSchema,
  OpenSequenceRequestSchema,
  RemoveNodeRequestSchema,
  AddNodeRequestSchema,
  CancelJobRequestSchema,
  DeleteJobRequestSchema,
  GetJobRequestSchema,
  GetResultsRequestSchema,
  ListJobsRequestSchema,
  SubmitJobRequestSchema,
  WatchJobRequestSchema,
  checkHealth,
  create,
  createClient,
  fromBinary,
  toBinary,
} from "@tessera/proto";
import { createGpuNode } from "@tessera/gpu-node";
import { createMemoryNode } from "@tessera/memory-node";
import { createStorageNode } from "@tessera/storage-node";
import { createCoordinator } from "@tessera/coordinator";
import { repoRoot } from "@tessera/cli";
import { bundled, generate, tempDir } from "@tessera/testing";
import { referenceText } from "./helpers.js";
import type { Role } from "@tessera/core";

/**
 * Milliseconds of fuzzing per service (its RPCs take turns).
 * TESSERA_FUZZ_SCALE multiplies them for a longer soak; TESSERA_FUZZ_ONLY
 * (e.g. "coordinator" or "memory,gpu") fuzzes only those services, with
 * the same cases as a full run of the same seed.
 */
const SCALE = Number(process.env["TESSERA_FUZZ_SCALE"] ?? 1);
const ONLY = process.env["TESSERA_FUZZ_ONLY"]?.split(",");
const budget = (service: Role, ms: number) => (ONLY && !ONLY.includes(service) ? 0 : ms * SCALE);
const BUDGET_MS = {
  attentionMemory: budget("memory", 3000),
  attentionStorage: budget("storage", 3000),
  gpu: budget("gpu", 4000),
  coordinator: budget("coordinator", 4000),
};
const SEED = Number(process.env["TESSERA_FUZZ_SEED"] ?? Date.now() % 2 ** 31);

// ---------------------------------------------------------------------------
// Seeded randomness (mulberry32) and mutations

interface Rng {
  next(): number;
  /** An integer in [0, n). */
  int(n: number): number;
  pick<T>(a: readonly T[]): T;
  bytes(n: number): Uint8Array;
}

function rng(seed: number): Rng {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return {
    next,
    int,
    pick: (arr) => arr[int(arr.length)]!,
    bytes: (n) => Uint8Array.from({ length: n }, () => int(256)),
  };
}

/** A 31-bit hash of a name (FNV-1a), to give each RPC its own PRNG stream. */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return (h >>> 1) ^ SEED;
}

const concat = (...parts: Uint8Array[]) => Uint8Array.from(parts.flatMap((p) => [...p]));

/** Varints that are out of range for the fields they land in: huge/negative-like uint32, int64 -1, ... */
const EXTREME_VARINTS = [0n, 1n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 2n ** 63n, 2n ** 64n - 1n];
const EXTREME_FLOATS = [NaN, Infinity, -Infinity, -0, -1, 3.4e38, 1e-45];

type Mutator = (r: Rng, b: Uint8Array) => Uint8Array;
const mutators: Mutator[] = [
  // Bit flips.
  (r, b) => {
    const out = Uint8Array.from(b);
    for (let i = 1 + r.int(4); i > 0 && out.length > 0; i--) out[r.int(out.length)]! ^= 1 << r.int(8);
    return out;
  },
  // Truncation.
  (r, b) => b.subarray(0, r.int(b.length + 1)),
  // Random bytes inserted.
  (r, b) => {
    const at = r.int(b.length + 1);
    return concat(b.subarray(0, at), r.bytes(1 + r.int(8)), b.subarray(at));
  },
  // A byte set to 0x00, 0x80 (varint continuation) or 0xff.
  (r, b) => {
    if (b.length === 0) return b;
    const out = Uint8Array.from(b);
    out[r.int(out.length)] = r.pick([0x00, 0x80, 0xff]);
    return out;
  },
  // The message twice: repeated fields doubled, scalars the same.
  (_r, b) => concat(b, b),
  // A field appended with an extreme value or the wrong wire type.
  (r, b) => {
    const w = new BinaryWriter();
    const field = 1 + r.int(10);
    switch (r.int(5)) {
      case 0:
        w.tag(field, WireType.Varint).uint64(r.pick(EXTREME_VARINTS));
        break;
      case 1:
        w.tag(field, WireType.Bit32).float(r.pick(EXTREME_FLOATS));
        break;
      case 2:
        w.tag(field, WireType.Bit64).double(r.pick(EXTREME_FLOATS));
        break;
      case 3:
        w.tag(field, WireType.LengthDelimited).bytes(r.bytes(r.int(48)));
        break;
      default:
        // A length that runs past the end of the message.
        w.tag(field, WireType.LengthDelimited).uint32(1000 + r.int(1 << 20));
        w.raw(r.bytes(r.int(8)));
    }
    return concat(b, w.finish());
  },
];

const EXTREME_STRINGS = ["", "\u0000", "../../..", "127.0.0.1:1", "not an address::", "é".repeat(3000)];

/**
 * One field of `schema`, encoded with its own wire type and an extreme
 * value: appended to a message it decodes, and overrides the field (a
 * scalar), adds an element (a list) or merges into it (a message, whose
 * body is made the same way, two levels deep).
 */
function typedField(r: Rng, schema: DescMessage, depth = 0): Uint8Array {
  const w = new BinaryWriter();
  const field = r.pick(schema.fields);
  const no = field.number;
  const kind = field.fieldKind === "list" ? field.listKind : field.fieldKind;
  if (kind === "message" && field.message) {
    const inner = field.message;
    const body =
      depth < 2 && inner.fields.length > 0
        ? concat(...Array.from({ length: 1 + r.int(3) }, () => typedField(r, inner, depth + 1)))
        : new Uint8Array(0);
    w.tag(no, WireType.LengthDelimited).bytes(body);
  } else if (kind === "enum") {
    w.tag(no, WireType.Varint).int32(r.pick([-1, 0, 1, 2, 5, 99, 0x7fffffff]));
  } else {
    switch (field.scalar) {
      case ScalarType.STRING:
        w.tag(no, WireType.LengthDelimited).string(r.pick(EXTREME_STRINGS));
        break;
      case ScalarType.BYTES:
        w.tag(no, WireType.LengthDelimited).bytes(r.bytes(r.int(64)));
        break;
      case ScalarType.FLOAT:
        w.tag(no, WireType.Bit32).float(r.pick(EXTREME_FLOATS));
        break;
      case ScalarType.DOUBLE:
        w.tag(no, WireType.Bit64).double(r.pick(EXTREME_FLOATS));
        break;
      default:
        // Every other scalar of these protos is a varint (uint32, int32, uint64, bool).
        w.tag(no, WireType.Varint).uint64(r.pick(EXTREME_VARINTS));
    }
  }
  return w.finish();
}

/**
 * One fuzzed message of `schema`: random bytes, a seed as is, a seed with
 * 1-3 typed fields appended (it still decodes), or a seed mutated 1-3
 * times at the byte level.
 */
function fuzzMessage(r: Rng, seeds: readonly Uint8Array[], schema: DescMessage): Uint8Array {
  const x = r.next();
  if (x < 0.15) return r.bytes(1 + r.int(r.next() < 0.8 ? 32 : 1024));
  let b = r.pick(seeds);
  if (x < 0.3 || schema.fields.length === 0) return b;
  if (x < 0.65) return concat(b, ...Array.from({ length: 1 + r.int(3) }, () => typedField(r, schema)));
  for (let i = 1 + r.int(3); i > 0; i--) b = r.pick(mutators)(r, b);
  return b;
}

const encode = <D extends DescMessage>(schema: D, init: MessageInitShape<D>) => toBinary(schema, create(schema, init));

function decodes(schema: DescMessage, bytes: Uint8Array): boolean {
  try {
    fromBinary(schema, bytes);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Raw calls: the bytes go out as they are

interface Outcome {
  code: number;
  details: string;
  responses: Buffer[];
}

const identity = (b: Buffer) => b;

function callRaw(
  client: grpc.Client,
  method: DescMethod,
  messages: Uint8Array[],
  deadlineMs: number,
): Promise<Outcome> {
  const path = `/${method.parent.typeName}/${method.name}`;
  const options = { deadline: Date.now() + deadlineMs };
  const responses: Buffer[] = [];
  return new Promise((resolve) => {
    if (method.methodKind === "unary") {
      client.makeUnaryRequest(
        path,
        identity,
        identity,
        Buffer.from(messages[0]!),
        new grpc.Metadata(),
        options,
        (err, res) =>
          resolve(
            err
              ? { code: err.code, details: err.details, responses }
              : { code: Code.OK, details: "", responses: [res!] },
          ),
      );
      return;
    }
    const listen = (call: grpc.ClientReadableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>) => {
      call.on("data", (b: Buffer) => responses.push(b));
      call.on("error", () => undefined); // the status below carries it
      call.on("status", (st: grpc.StatusObject) => resolve({ code: st.code, details: st.details, responses }));
    };
    if (method.methodKind === "server_streaming") {
      const md = new grpc.Metadata();
      listen(client.makeServerStreamRequest(path, identity, identity, Buffer.from(messages[0]!), md, options));
      return;
    }
    const call = client.makeBidiStreamRequest(path, identity, identity, new grpc.Metadata(), options);
    listen(call);
    for (const m of messages) call.write(Buffer.from(m));
    call.end();
  });
}

// ---------------------------------------------------------------------------
// What each RPC gets and may answer

/** How to fuzz one RPC. */
interface RpcSpec {
  method: DescMethod;
  client: grpc.Client;
  /** Valid messages and well-formed but unacceptable ones, encoded. */
  seeds: Uint8Array[];
  /** Status codes besides OK a decodable request may end with. */
  codes: readonly Code[];
  /** Streams: the NodeError codes a response may carry. */
  inBand?: readonly Code[];
  deadlineMs: number;
  /** Called with each decodable request that ended OK (to undo what it did). */
  onOk?(request: Uint8Array): void;
}

/** What one service's fuzzing saw, per RPC: cases, and how many ended with each code. */
type Tally = Map<string, { cases: number; codes: Map<string, number> }>;

/**
 * Sends fuzzed calls to the RPCs of `specs` in turn for `budgetMs` and
 * checks each outcome; returns the failures (with what replays them).
 */
async function fuzzService(specs: RpcSpec[], budgetMs: number, tally: Tally): Promise<string[]> {
  const failures: string[] = [];
  const streams = specs.map((s) => rng(hash(s.method.parent.typeName + "." + s.method.name)));
  const end = Date.now() + budgetMs;
  for (let k = 0; Date.now() < end && failures.length < 10; k++) {
    for (const [i, spec] of specs.entries()) {
      const r = streams[i]!;
      const { method } = spec;
      const name = `${method.parent.typeName}.${method.name}`;
      const bidi = method.methodKind === "bidi_streaming";
      const messages = Array.from({ length: bidi ? 1 + r.int(3) : 1 }, () => fuzzMessage(r, spec.seeds, method.input));
      const firstBad = messages.findIndex((m) => !decodes(method.input, m));
      const t0 = Date.now();
      const out = await callRaw(spec.client, method, messages, spec.deadlineMs);
      const ms = Date.now() - t0;
      const entry = tally.get(name) ?? { cases: 0, codes: new Map<string, number>() };
      tally.set(name, entry);
      entry.cases++;
      const codeName = grpc.status[out.code] ?? String(out.code);
      entry.codes.set(codeName, (entry.codes.get(codeName) ?? 0) + 1);
      const problems: string[] = [];
      if (firstBad >= 0) {
        if (out.code !== Code.INVALID_ARGUMENT)
          problems.push(`undecodable message ${firstBad}: expected INVALID_ARGUMENT`);
        if (bidi && out.code === Code.INVALID_ARGUMENT && out.responses.length !== firstBad)
          problems.push(`${out.responses.length} responses before the undecodable message ${firstBad}`);
      } else if (bidi) {
        if (out.code !== Code.OK) problems.push("expected the stream to end OK (errors are in-band)");
        else if (out.responses.length !== messages.length)
          problems.push(`${out.responses.length} responses to ${messages.length} requests`);
        for (const b of out.responses) {
          const schema = method.output as typeof AttendResponseSchema | typeof ForwardResponseSchema;
          const e = fromBinary(schema, b).error;
          const inBand = `in-band ${e ? (grpc.status[e.code] ?? e.code) : "none"}`;
          entry.codes.set(inBand, (entry.codes.get(inBand) ?? 0) + 1);
          if (e && !spec.inBand!.includes(e.code))
            problems.push(`in-band error ${grpc.status[e.code] ?? e.code}: ${e.message}`);
        }
      } else if (out.code !== Code.OK && !spec.codes.includes(out.code)) {
        problems.push(`status not allowed for a decodable request`);
      } else if (out.code === Code.OK) {
        spec.onOk?.(messages[0]!);
      }
      if (problems.length > 0) {
        failures.push(
          `${name} case ${k} (seed ${SEED}): ${problems.join("; ")}; got ${codeName} "${out.details}" after ${ms} ms; ` +
            `messages: ${messages.map((m) => Buffer.from(m.subarray(0, 64)).toString("hex") + (m.length > 64 ? `...(${m.length} B)` : "")).join(" | ")}`,
        );
      }
    }
  }
  return failures;
}

// ---------------------------------------------------------------------------

test("malformed and mutated messages to every RPC end with a documented status and crash no node", async (t) => {
  t.diagnostic(`fuzz seed ${SEED} (replay with TESSERA_FUZZ_SEED=${SEED})`);
  const shape = (await loadCheckpoint(bundled.model)).shape;
  const { nLayers, nHeads, nKvHeads, headDim, vocabSize } = shape;
  const dir = await tempDir();
  const memory = createMemoryNode({ port: 0, capacityBytes: "64MiB", attentionThreads: 1 });
  const storage = createStorageNode({ port: 0, dataDir: dir.path, capacityBytes: "64MiB" });
  // Short timeouts: a fuzzed Forward may name an attention node or stage that never answers.
  // A short model lease: fuzzed Loads under other holders do not hold up the coordinator's after them.
  const gpu = createGpuNode({
    port: 0,
    intraOpThreads: 1,
    attentionTimeoutMs: 3000,
    downstreamTimeoutMs: 3000,
    leaseTtlMs: 200,
    log: () => {},
  });
  const nodes = [memory, storage, gpu];
  await Promise.all(nodes.map((n) => n.start()));
  const coordinator = createCoordinator({
    gpuNodes: [gpu.address],
    memoryNodes: [memory.address],
    storageNodes: [storage.address],
    modelPath: bundled.model,
    tokenizerPath: bundled.tokenizer,
    connectTimeoutMs: 1000,
    log: () => {},
  });
  await coordinator.start();
  const raw = (address: string) =>
    new grpc.Client(address, grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": 64 << 20 });
  const clients = {
    memory: raw(memory.address),
    storage: raw(storage.address),
    gpu: raw(gpu.address),
    coordinator: raw(coordinator.address),
  };
  t.after(async () => {
    for (const c of Object.values(clients)) c.close();
    await coordinator.close();
    await Promise.all(nodes.map((n) => n.close()));
    await dir.remove();
  });

  // A model on the gpu-node and a sequence on each attention node, so valid seeds do real work.
  const gpuClient = createClient(GpuNode, gpu.address);
  const fullLoad = { modelPath: bundled.model, layerStart: 0, layerEnd: nLayers, embed: true, head: true };
  await gpuClient.load(fullLoad);
  gpuClient.close();
  const layout = { nLayers, nHeads, nKvHeads, headDim };
  for (const address of [memory.address, storage.address]) {
    const c = createClient(Attention, address);
    await c.openSequence({ seqId: "fuzz", layout, maxPositions: 64 });
    c.close();
  }

  const f32 = (values: number[], shape: number[]) => ({
    dtype: DType.DTYPE_F32,
    shape,
    data: new Uint8Array(Float32Array.from(values).buffer),
  });
  const filled = (n: number, v = 0.5) => Array.from({ length: n }, (_, i) => v * Math.sin(i));
  const q1 = f32(filled(nHeads * headDim), [1, nHeads, headDim]);
  const k1 = f32(filled(nKvHeads * headDim, 0.3), [1, nKvHeads, headDim]);
  const U32_MAX = 0xffffffff;
  const tally: Tally = new Map();
  const report = (label: string) => {
    for (const [name, { cases, codes }] of tally)
      t.diagnostic(`${label} ${name}: ${cases} cases, ${[...codes].map(([c, n]) => `${c} ${n}`).join(", ")}`);
    tally.clear();
  };

  // --- Attention (memory-node, storage-node) -------------------------------
  const attendSeeds = [
    { stepId: 1n, layer: 0, items: [{ seqId: "fuzz", startPos: 0, nTokens: 1 }], q: q1, k: k1, v: k1 },
    {
      stepId: 2n,
      layer: nLayers - 1,
      items: [{ seqId: "fuzz", startPos: 0, nTokens: 1 }],
      q: { dtype: DType.DTYPE_F16, shape: [1, nHeads, headDim], data: new Uint8Array(2 * nHeads * headDim) },
      k: { dtype: DType.DTYPE_F16, shape: [1, nKvHeads, headDim], data: new Uint8Array(2 * nKvHeads * headDim) },
      v: { dtype: DType.DTYPE_F16, shape: [1, nKvHeads, headDim], data: new Uint8Array(2 * nKvHeads * headDim) },
    },
    // NaN values: attended like any other.
    {
      stepId: 3n,
      items: [{ seqId: "fuzz", startPos: 0, nTokens: 1 }],
      q: f32(filled(nHeads * headDim, NaN), [1, nHeads, headDim]),
      k: k1,
      v: f32(filled(nKvHeads * headDim, NaN), [1, nKvHeads, headDim]),
    },
    // Values whose q·k overflows f32.
    {
      stepId: 19n,
      items: [{ seqId: "fuzz", startPos: 0, nTokens: 1 }],
      q: f32(filled(nHeads * headDim, 3e38), [1, nHeads, headDim]),
      k: f32(filled(nKvHeads * headDim, -3e38), [1, nKvHeads, headDim]),
      v: k1,
    },
    // Wrong dtypes.
    { stepId: 4n, items: [{ seqId: "fuzz", nTokens: 1 }], q: { ...q1, dtype: DType.DTYPE_BF16 }, k: k1, v: k1 },
    { stepId: 5n, items: [{ seqId: "fuzz", nTokens: 1 }], q: q1, k: { ...k1, dtype: 99 as DType }, v: k1 },
    { stepId: 6n, items: [{ seqId: "fuzz", nTokens: 1 }], q: q1, k: k1, v: { ...k1, dtype: DType.DTYPE_I64 } },
    // Shapes that do not match the data, or each other.
    { stepId: 7n, items: [{ seqId: "fuzz", nTokens: 1 }], q: { ...q1, shape: [2, nHeads, headDim] }, k: k1, v: k1 },
    { stepId: 8n, items: [{ seqId: "fuzz", nTokens: 1 }], q: { ...q1, shape: [U32_MAX, U32_MAX, 1] }, k: k1, v: k1 },
    { stepId: 9n, items: [{ seqId: "fuzz", nTokens: 1 }], q: { ...q1, shape: [nHeads * headDim] }, k: k1, v: k1 },
    { stepId: 10n, items: [{ seqId: "fuzz", nTokens: 1 }], q: q1, k: k1, v: { ...k1, data: new Uint8Array(3) } },
    { stepId: 11n, items: [{ seqId: "fuzz", nTokens: 1 }], q: q1, k: k1 },
    // Positions and counts out of range, unknown, empty and repeated ids.
    { stepId: 12n, items: [{ seqId: "fuzz", startPos: 0, nTokens: U32_MAX }], q: q1, k: k1, v: k1 },
    { stepId: 13n, items: [{ seqId: "fuzz", startPos: U32_MAX, nTokens: 1 }], q: q1, k: k1, v: k1 },
    { stepId: 14n, layer: U32_MAX, items: [{ seqId: "fuzz", nTokens: 1 }], q: q1, k: k1, v: k1 },
    { stepId: 15n, items: [{ seqId: "", nTokens: 1 }], q: q1, k: k1, v: k1 },
    { stepId: 16n, items: [{ seqId: "nope", nTokens: 1 }], q: q1, k: k1, v: k1 },
    {
      stepId: 17n,
      items: [
        { seqId: "fuzz", nTokens: 1 },
        { seqId: "fuzz", nTokens: 1 },
      ],
      q: q1,
      k: k1,
      v: k1,
    },
    {
      stepId: 18n,
      items: [],
      q: f32([], [0, nHeads, headDim]),
      k: f32([], [0, nKvHeads, headDim]),
      v: f32([], [0, nKvHeads, headDim]),
    },
    { stepId: 2n ** 64n - 1n, items: [{ seqId: "fuzz", nTokens: 0 }], q: q1, k: k1, v: k1 },
  ].map((m) => encode(AttendRequestSchema, m));
  const openSeeds = [
    { seqId: "fuzz-open", layout, maxPositions: 16 },
    { seqId: "fuzz", layout, maxPositions: 64 },
    { seqId: "fuzz", layout: { ...layout, nHeads: 2 * nHeads }, maxPositions: 8 },
    { seqId: "fuzz-big", layout, maxPositions: U32_MAX },
    { seqId: "fuzz-layers", layout: { ...layout, nLayers: U32_MAX }, maxPositions: 1 },
    { seqId: "fuzz-head-dim", layout: { ...layout, headDim: U32_MAX }, maxPositions: 1 },
    { seqId: "fuzz-heads", layout: { ...layout, nHeads: U32_MAX, nKvHeads: 1, headDim: 1 }, maxPositions: 1 },
    { seqId: "fuzz-kv", layout: { ...layout, nKvHeads: nHeads + 1 }, maxPositions: 1 },
    { seqId: "fuzz-zero", layout: { nLayers: 0, nHeads: 0, nKvHeads: 0, headDim: 0 }, maxPositions: 0 },
    { seqId: "fuzz-no-layout", maxPositions: 4 },
    { seqId: "", layout, maxPositions: 4 },
    { seqId: "../../escape/..", layout, maxPositions: 4 },
    { seqId: "x".repeat(5000), layout, maxPositions: 4 },
  ].map((m) => encode(OpenSequenceRequestSchema, m));
  const closeSeeds = [{ seqId: "nope" }, { seqId: "" }, { seqId: "fuzz-open" }, { seqId: "../x" }].map((m) =>
    encode(CloseSequenceRequestSchema, m),
  );
  /** Sequences fuzzed OpenSequence calls opened, by node: closed afterwards, so the reference job has room. */
  const opened = new Map<string, Set<string>>();
  const attentionSpecs = (client: grpc.Client, address: string): RpcSpec[] => {
    const ids = new Set<string>();
    opened.set(address, ids);
    const seeds: Record<string, Uint8Array[]> = {
      OpenSequence: openSeeds,
      CloseSequence: closeSeeds,
      Attend: attendSeeds,
      Info: [new Uint8Array(0)],
    };
    return Attention.methods.map((method) => {
      assert.ok(seeds[method.name], `no fuzz seeds for Attention.${method.name}`);
      return {
        method,
        client,
        seeds: seeds[method.name]!,
        // OpenSequence: INVALID_ARGUMENT for a bad layout, seq_id or
        // max_positions (or another layout than the stored one),
        // RESOURCE_EXHAUSTED past the node's capacity, FAILED_PRECONDITION on
        // a storage-node whose read buffer cannot hold one position of the
        // layout (both documented on the node).
        codes: [Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.FAILED_PRECONDITION],
        // Attend answers a bad request in-band (@tessera/attention's
        // AttentionRequestError): INVALID_ARGUMENT for bad shapes, dtypes and
        // fields, NOT_FOUND for an unknown sequence, OUT_OF_RANGE for
        // positions outside the sequence.
        inBand: [Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.OUT_OF_RANGE],
        deadlineMs: 5000,
        onOk: (b) => {
          if (method.name === "OpenSequence") ids.add(fromBinary(OpenSequenceRequestSchema, b).seqId);
        },
      };
    });
  };
  const attentionFailures = [
    ...(await fuzzService(attentionSpecs(clients.memory, memory.address), BUDGET_MS.attentionMemory, tally)),
  ];
  report("memory-node");
  attentionFailures.push(
    ...(await fuzzService(attentionSpecs(clients.storage, storage.address), BUDGET_MS.attentionStorage, tally)),
  );
  report("storage-node");
  assert.deepEqual(attentionFailures, []);

  // --- GpuNode -----------------------------------------------------------------
  const seq = (over: object = {}) => ({
    seqId: "fuzz",
    startPos: 0,
    nTokens: 2,
    attentionAddress: memory.address,
    ...over,
  });
  const forwardSeeds = [
    { stepId: 1n, sequences: [seq()], tokens: [1, 403] },
    { stepId: 2n, sequences: [seq({ attentionAddress: storage.address })], tokens: [1, 56] },
    {
      stepId: 3n,
      sequences: [
        seq({
          attentionAddress: "",
          shards: [{ address: memory.address, seqId: "fuzz", kvHeadStart: 0, kvHeadEnd: nKvHeads }],
        }),
      ],
      tokens: [1, 2],
    },
    // Tokens outside the vocabulary, too few tokens, enormous n_tokens and positions.
    { stepId: 4n, sequences: [seq()], tokens: [-1, vocabSize] },
    { stepId: 5n, sequences: [seq()], tokens: [1] },
    { stepId: 6n, sequences: [seq({ nTokens: U32_MAX })], tokens: [1, 2] },
    { stepId: 7n, sequences: [seq({ startPos: U32_MAX, nTokens: 1 })], tokens: [1] },
    { stepId: 8n, sequences: [seq({ nTokens: 0 })], tokens: [] },
    // Empty, unknown and repeated ids; no attention node; one that does not listen, or is no address.
    { stepId: 9n, sequences: [seq({ seqId: "" })], tokens: [1, 2] },
    { stepId: 10n, sequences: [seq({ seqId: "nope" })], tokens: [1, 2] },
    { stepId: 11n, sequences: [seq(), seq()], tokens: [1, 2, 3, 4] },
    { stepId: 12n, sequences: [seq({ attentionAddress: "" })], tokens: [1, 2] },
    { stepId: 13n, sequences: [seq({ attentionAddress: "127.0.0.1:1" })], tokens: [1, 2] },
    { stepId: 14n, sequences: [seq({ attentionAddress: "not an address::" })], tokens: [1, 2] },
    // A NUL inside a host name: the resolver reads "127", i.e. 0.0.0.127, which accepts TCP here.
    { stepId: 19n, sequences: [seq({ attentionAddress: "127\u0000.0.0.1:1" })], tokens: [1, 2] },
    // Shards that do not cover the KV heads.
    {
      stepId: 15n,
      sequences: [
        seq({
          attentionAddress: "",
          shards: [{ address: memory.address, seqId: "fuzz", kvHeadStart: 1, kvHeadEnd: U32_MAX }],
        }),
      ],
      tokens: [1, 2],
    },
    // Hidden states (this stage embeds), with a wrong dtype, shape and NaN; next stages after the head.
    {
      stepId: 16n,
      sequences: [seq()],
      tokens: [1, 2],
      hidden: { dtype: DType.DTYPE_I32, shape: [U32_MAX], data: new Uint8Array(4) },
    },
    { stepId: 17n, sequences: [seq()], tokens: [1, 2], nextStages: ["", "127.0.0.1:1"] },
    { stepId: 18n, sequences: [], tokens: [] },
    // A model and range other than the loaded one; next_stage_models without (or with too many) next stages.
    { stepId: 20n, sequences: [seq()], tokens: [1, 2], model: { modelId: "0123456789abcdef", layerEnd: U32_MAX } },
    { stepId: 21n, sequences: [seq()], tokens: [1, 2], nextStageModels: [{ modelId: "" }, { layerStart: 3 }] },
  ].map((m) => encode(ForwardRequestSchema, m));
  const loadSeeds = [
    fullLoad,
    { ...fullLoad, layerStart: 2, layerEnd: 1 },
    { ...fullLoad, layerEnd: U32_MAX },
    { ...fullLoad, layerStart: U32_MAX, layerEnd: U32_MAX },
    { ...fullLoad, layerStart: 1, layerEnd: 1, embed: false, head: false },
    { ...fullLoad, modelPath: "" },
    { ...fullLoad, modelPath: "/nonexistent/model.bin" },
    { ...fullLoad, modelPath: bundled.tokenizer },
    { ...fullLoad, modelPath: join(repoRoot, "package.json") },
    { ...fullLoad, modelPath: "/" },
    // Other holders of another model or a missing one: refused (LEASED) while the lease is live.
    { ...fullLoad, layerEnd: 1, holder: "fuzz-holder" },
    { ...fullLoad, modelPath: "/nonexistent/model.bin", holder: "\u0000".repeat(300) },
  ].map((m) => encode(LoadRequestSchema, m));
  const gpuSeeds: Record<string, Uint8Array[]> = {
    Load: loadSeeds,
    Forward: forwardSeeds,
    Info: [new Uint8Array(0)],
    Release: [new Uint8Array(0), encode(ReleaseRequestSchema, { holder: "fuzz-holder" })],
  };
  const gpuSpecs: RpcSpec[] = GpuNode.methods.map((method) => {
    assert.ok(gpuSeeds[method.name], `no fuzz seeds for GpuNode.${method.name}`);
    return {
      method,
      client: clients.gpu,
      seeds: gpuSeeds[method.name]!,
      // Load: NOT_FOUND for a missing file, INVALID_ARGUMENT for a corrupt
      // one or a bad layer range, FAILED_PRECONDITION (LEASED) under another
      // holder's live lease (documented on the RPC).
      codes: [Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION],
      // Forward answers a failed step in-band: INVALID_ARGUMENT for a bad
      // request, FAILED_PRECONDITION when a fuzzed Load left no model (or
      // one without the embedding), and the attention node's own in-band
      // codes (NOT_FOUND, OUT_OF_RANGE, INVALID_ARGUMENT) or UNAVAILABLE for
      // an attention node that does not answer.
      inBand: [Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND, Code.OUT_OF_RANGE, Code.UNAVAILABLE],
      deadlineMs: 8000,
    };
  });
  const gpuFailures = await fuzzService(gpuSpecs, BUDGET_MS.gpu, tally);
  report("gpu-node");
  assert.deepEqual(gpuFailures, []);

  // --- Coordinator ------------------------------------------------------------
  const prompt = (over: object = {}) => ({ id: "p", prompt: "Once upon a time", ...over });
  const sampling = { temperature: 0, maxTokens: 4 };
  const generateSeeds = [
    { prompts: [prompt()], sampling },
    { prompts: [prompt(), prompt({ id: "q", prompt: "", kv: KvPlacement.STORAGE, maxTokens: 2 })], sampling },
    // NaN and out-of-range sampling; enormous max_tokens (bounded by the context); an unknown placement.
    { prompts: [prompt({ temperature: NaN, topP: NaN })], sampling: { ...sampling, temperature: NaN } },
    { prompts: [prompt({ temperature: -1, topP: 7, seed: 2n ** 64n - 1n })], sampling },
    { prompts: [prompt({ maxTokens: U32_MAX })], sampling: { ...sampling, maxTokens: U32_MAX, temperature: 1e30 } },
    { prompts: [prompt({ kv: 99 as KvPlacement })], sampling, kv: 77 as KvPlacement },
    // Empty and repeated ids, no prompts, a prompt beyond the context, models that are not there.
    { prompts: [prompt({ id: "" })], sampling },
    { prompts: [prompt(), prompt()], sampling },
    { prompts: [], sampling },
    { prompts: [prompt({ prompt: "a ".repeat(3000) })], sampling },
    { prompts: [prompt()], sampling, modelPath: "/nonexistent/model.bin" },
    { prompts: [prompt()], sampling, tokenizerPath: bundled.model },
    { prompts: [prompt()], sampling, jobId: "fuzz-job" },
  ].map((m) => encode(GenerateRequestSchema, m));
  const addSeeds = [
    { role: "memory", address: memory.address },
    { role: "gpu", address: "127.0.0.1:1" },
    { role: "storage", address: "127.0.0.1:99999" },
    { role: "tpu", address: memory.address },
    { role: "memory", address: "" },
    { role: "", address: "[::1]:80" },
  ].map((m) => encode(AddNodeRequestSchema, m));
  const removeSeeds = [{ address: gpu.address }, { address: "127.0.0.1:1" }, { address: "" }].map((m) =>
    encode(RemoveNodeRequestSchema, m),
  );
  // Job RPCs: this coordinator has no NATS, so they end FAILED_PRECONDITION
  // whatever the request (test/jobs-grpc.test.ts runs them against NATS).
  const jobInput = new TextEncoder().encode('{"id":"a","prompt":"Once"}\n');
  const submitSeeds = [
    { input: jobInput },
    { jobId: "fuzz", tenant: "t", priority: "high", input: jobInput, format: "tessera", sampling },
    { jobId: "bad id", priority: "urgent", format: "csv", input: new Uint8Array([0xff, 0xfe]) },
    { input: new Uint8Array(0), sampling: { temperature: NaN, topP: 7, seed: 2n ** 64n - 1n } },
  ].map((m) => encode(SubmitJobRequestSchema, m));
  const coordinatorSeeds: Record<string, Uint8Array[]> = {
    Generate: generateSeeds,
    ListNodes: [new Uint8Array(0)],
    ListModels: [new Uint8Array(0)],
    AddNode: addSeeds,
    RemoveNode: removeSeeds,
    SubmitJob: submitSeeds,
    ListJobs: [{}, { tenant: "t" }].map((m) => encode(ListJobsRequestSchema, m)),
    GetJob: [{ id: "fuzz" }, { id: "" }, { id: "a.b\u0000" }].map((m) => encode(GetJobRequestSchema, m)),
    GetResults: [{ id: "fuzz" }, { id: "fuzz", follow: true }, { id: "" }].map((m) =>
      encode(GetResultsRequestSchema, m),
    ),
    CancelJob: [{ id: "fuzz" }, { id: "" }].map((m) => encode(CancelJobRequestSchema, m)),
    WatchJob: [{ id: "fuzz" }, { id: "" }].map((m) => encode(WatchJobRequestSchema, m)),
    DeleteJob: [{ id: "fuzz" }, { id: "" }, { id: "a/b" }].map((m) => encode(DeleteJobRequestSchema, m)),
  };
  const coordinatorCodes: Record<string, Code[]> = {
    // Generate: INVALID_ARGUMENT for a bad request as a whole (documented;
    // a bad prompt only gets an error Result and the call ends OK),
    // ALREADY_EXISTS for a job_id that is running, NOT_FOUND for a model
    // that is not served.
    Generate: [Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS, Code.NOT_FOUND],
    ListNodes: [],
    ListModels: [],
    // AddNode: INVALID_ARGUMENT for a bad role or address, UNAVAILABLE for
    // an address whose health check does not answer (documented).
    AddNode: [Code.INVALID_ARGUMENT, Code.UNAVAILABLE],
    // RemoveNode: NOT_FOUND for an unknown address, FAILED_PRECONDITION for
    // the last gpu-node or attention node (documented).
    RemoveNode: [Code.NOT_FOUND, Code.FAILED_PRECONDITION],
    // Job RPCs (documented): FAILED_PRECONDITION without NATS; with it,
    // INVALID_ARGUMENT for a bad field, line or limit, NOT_FOUND for an
    // unknown job, UNAVAILABLE when NATS does not answer.
    ...Object.fromEntries(
      ["SubmitJob", "ListJobs", "GetJob", "GetResults", "CancelJob", "WatchJob", "DeleteJob"].map((name) => [
        name,
        [Code.FAILED_PRECONDITION, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNAVAILABLE],
      ]),
    ),
  };
  const coordinatorSpecs: RpcSpec[] = Coordinator.methods.map((method) => {
    assert.ok(coordinatorSeeds[method.name], `no fuzz seeds for Coordinator.${method.name}`);
    return {
      method,
      client: clients.coordinator,
      seeds: coordinatorSeeds[method.name]!,
      codes: coordinatorCodes[method.name]!,
      deadlineMs: 10_000,
    };
  });
  const coordinatorFailures = await fuzzService(coordinatorSpecs, BUDGET_MS.coordinator, tally);
  report("coordinator");
  assert.deepEqual(coordinatorFailures, []);

  // --- Afterwards: every node healthy, a normal job exact ----------------------
  for (const [address, ids] of opened) {
    const c = createClient(Attention, address);
    for (const seqId of ids) await c.closeSequence({ seqId });
    c.close();
  }
  // A fuzzed RemoveNode may have hit a real node: put the cluster back (AddNode of a member changes nothing).
  const coordinatorClient = createClient(Coordinator, coordinator.address);
  for (const [role, address] of [
    ["gpu", gpu.address],
    ["memory", memory.address],
    ["storage", storage.address],
  ] as const) {
    await coordinatorClient.addNode({ role, address });
  }
  coordinatorClient.close();
  for (const [address, service] of [
    [gpu.address, "tessera.v1.GpuNode"],
    [memory.address, "tessera.v1.Attention"],
    [storage.address, "tessera.v1.Attention"],
    [coordinator.address, "tessera.v1.Coordinator"],
  ] as const) {
    assert.equal(await checkHealth(address, service, 2000), "SERVING", `${service} at ${address}`);
  }
  const expected = await referenceText(join(repoRoot, "../shared/models/README.md"));
  const outcome = await generate(coordinator.address, {
    prompts: [
      { id: "memory", prompt: "", kv: KvPlacement.MEMORY },
      { id: "storage", prompt: "", kv: KvPlacement.STORAGE },
    ],
    sampling: { temperature: 0, maxTokens: 256 },
  });
  for (const id of ["memory", "storage"]) {
    const r = outcome.results.get(id)!;
    assert.equal(r.error, "", `${id}: ${r.error}`);
    assert.ok(r.kvNode.startsWith(id), r.kvNode);
    assert.equal(r.completion, expected, id);
  }
});
