/**
 * Test harness for Attention nodes (memory-node, storage-node) and core's
 * attention kernels: a plain reference of what a node must answer (the K/V
 * history of each sequence and textbook causal GQA attention over it), and
 * a promise-per-request wrapper of the Attend stream. Kept apart from the
 * code under test: nothing here uses the nodes' code or core's kernels.
 */
import assert from "node:assert/strict";
import { f32Tensor, tensorF32 } from "@tessera/core";
import type { AttentionDims } from "@tessera/attention";
import {
  Attention,
  create,
  AttendRequestSchema,
  type AttendRequest,
  type AttendResponse,
  type Client,
  type MessageInitShape,
} from "@tessera/proto";

/** KV layout of the test sequences. */
export interface Layout {
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
}

/** Deterministic uniform(-amp, amp) values (mulberry32), so failures reproduce. */
export function random(seed: number): (amp?: number) => number {
  let a = seed >>> 0;
  return (amp = 1) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * amp;
  };
}

/**
 * Textbook causal GQA attention for queries at positions startPos.. over
 * K/V rows [position, n_kv_heads, head_dim]: o = softmax(q K^T / sqrt(d)) V.
 */
export function naiveAttention(
  L: AttentionDims,
  q: Float32Array,
  nQueries: number,
  startPos: number,
  k: Float32Array,
  v: Float32Array,
): Float64Array {
  const { nHeads, nKvHeads, headDim } = L;
  const out = new Float64Array(nQueries * nHeads * headDim);
  for (let i = 0; i < nQueries; i++) {
    const pos = startPos + i;
    for (let h = 0; h < nHeads; h++) {
      const kvh = Math.floor(h / (nHeads / nKvHeads));
      const scores: number[] = [];
      for (let t = 0; t <= pos; t++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++)
          dot += q[(i * nHeads + h) * headDim + d]! * k[(t * nKvHeads + kvh) * headDim + d]!;
        scores.push(dot / Math.sqrt(headDim));
      }
      const max = Math.max(...scores);
      const w = scores.map((s) => Math.exp(s - max));
      const sum = w.reduce((a, b) => a + b, 0);
      for (let d = 0; d < headDim; d++) {
        let o = 0;
        for (let t = 0; t <= pos; t++) o += (w[t]! / sum) * v[(t * nKvHeads + kvh) * headDim + d]!;
        out[(i * nHeads + h) * headDim + d] = o;
      }
    }
  }
  return out;
}

/** Item of a step: which sequence, from which position, how many tokens. */
export interface StepItem {
  seqId: string;
  startPos: number;
  nTokens: number;
}

/** A request and the output a correct node returns for it. */
export interface Step {
  request: MessageInitShape<typeof AttendRequestSchema>;
  /** [total_tokens, n_heads * head_dim] */
  expected: Float64Array;
}

/**
 * What every sequence's cache must hold: per sequence and layer the K and V
 * rows written so far. `step` makes a request with random q/k/v, applies it
 * to the history, and computes the expected output.
 */
export class KvHistory {
  private readonly k = new Map<string, Float32Array[]>();
  private readonly v = new Map<string, Float32Array[]>();
  private stepId = 0n;

  constructor(
    readonly layout: Layout,
    readonly maxPositions: number,
    private readonly rnd: (amp?: number) => number,
  ) {}

  private cache(seqId: string): { k: Float32Array[]; v: Float32Array[] } {
    if (!this.k.has(seqId)) {
      const n = this.maxPositions * this.layout.nKvHeads * this.layout.headDim;
      this.k.set(
        seqId,
        Array.from({ length: this.layout.nLayers }, () => new Float32Array(n)),
      );
      this.v.set(
        seqId,
        Array.from({ length: this.layout.nLayers }, () => new Float32Array(n)),
      );
    }
    return { k: this.k.get(seqId)!, v: this.v.get(seqId)! };
  }

  /** The K and V rows [max_positions, n_kv_heads, head_dim] written so far for `seqId` at `layer`. */
  kv(seqId: string, layer: number): { k: Float32Array; v: Float32Array } {
    const c = this.cache(seqId);
    return { k: c.k[layer]!, v: c.v[layer]! };
  }

  /** A step of `layer` for `items` with fresh random q, k, v (k with a large range so softmax is peaked). */
  step(layer: number, items: StepItem[]): Step {
    const L = this.layout;
    const T = items.reduce((a, i) => a + i.nTokens, 0);
    const q = Float32Array.from({ length: T * L.nHeads * L.headDim }, () => this.rnd(2));
    const k = Float32Array.from({ length: T * L.nKvHeads * L.headDim }, () => this.rnd(2));
    const v = Float32Array.from({ length: T * L.nKvHeads * L.headDim }, () => this.rnd(1));
    return this.stepWith(layer, items, q, k, v);
  }

  /** A step with the given q, k, v ([T, heads, head_dim] f32). */
  stepWith(layer: number, items: StepItem[], q: Float32Array, k: Float32Array, v: Float32Array): Step {
    const L = this.layout;
    const T = items.reduce((a, i) => a + i.nTokens, 0);
    const kvRow = L.nKvHeads * L.headDim;
    const qRow = L.nHeads * L.headDim;
    const expected = new Float64Array(T * qRow);
    let row = 0;
    for (const it of items) {
      const c = this.cache(it.seqId);
      c.k[layer]!.set(k.subarray(row * kvRow, (row + it.nTokens) * kvRow), it.startPos * kvRow);
      c.v[layer]!.set(v.subarray(row * kvRow, (row + it.nTokens) * kvRow), it.startPos * kvRow);
      const o = naiveAttention(
        L,
        q.subarray(row * qRow, (row + it.nTokens) * qRow),
        it.nTokens,
        it.startPos,
        c.k[layer]!,
        c.v[layer]!,
      );
      expected.set(o, row * qRow);
      row += it.nTokens;
    }
    this.stepId += 1n;
    return {
      request: {
        stepId: this.stepId,
        layer,
        items,
        q: f32Tensor(q, [T, L.nHeads, L.headDim]),
        k: f32Tensor(k, [T, L.nKvHeads, L.headDim]),
        v: f32Tensor(v, [T, L.nKvHeads, L.headDim]),
      },
      expected,
    };
  }
}

/** Asserts `r` carries no error and an output equal to `expected` within `rel` (relative, floor 1). */
export function assertOutput(
  r: AttendResponse,
  expected: Float64Array,
  L: Layout,
  rel = 1e-5,
  what = "o",
): Float32Array {
  assert.equal(r.error, undefined, `${what}: unexpected error ${r.error?.message}`);
  assert.deepEqual(r.o?.shape, [expected.length / (L.nHeads * L.headDim), L.nHeads * L.headDim], `${what}: shape`);
  const o = tensorF32(r.o, what);
  for (let i = 0; i < expected.length; i++) {
    const tol = rel * Math.max(1, Math.abs(expected[i]!));
    assert.ok(Math.abs(o[i]! - expected[i]!) <= tol, `${what}[${i}]: ${o[i]} vs ${expected[i]}`);
  }
  assert.ok(r.computeSeconds >= 0, `${what}: compute_seconds ${r.computeSeconds}`);
  return o;
}

/** An Attend stream where each request gets a promise of its response (the node answers in order). */
export interface AttendSession {
  attend(req: MessageInitShape<typeof AttendRequestSchema>): Promise<AttendResponse>;
  /** Half-closes the stream; resolves with the status code the node ends it with. */
  end(): Promise<number>;
}

/** Opens an Attend stream on `client`. */
export function openAttend(client: Client<typeof Attention>): AttendSession {
  const call = client.attend();
  const waiting: { resolve(r: AttendResponse): void; reject(e: unknown): void }[] = [];
  let failure: unknown;
  const ended = new Promise<number>((resolve) => call.on("status", (s: { code: number }) => resolve(s.code)));
  call.on("data", (r: AttendResponse) => {
    const w = waiting.shift();
    if (w) w.resolve(r);
    else failure = new Error(`response for step ${r.stepId} without a request`);
  });
  call.on("error", (err: unknown) => {
    failure = err;
    for (const w of waiting.splice(0)) w.reject(err);
  });
  return {
    attend(req) {
      if (failure) return Promise.reject(failure);
      // Round-trip through create so the test sends exactly what a client would.
      const msg: AttendRequest = create(AttendRequestSchema, req);
      return new Promise((resolve, reject) => {
        waiting.push({ resolve, reject });
        call.write(msg);
      });
    },
    end() {
      call.end();
      return ended;
    },
  };
}
