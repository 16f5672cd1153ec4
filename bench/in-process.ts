/**
 * The split-overhead baseline: the same model run in one process with the
 * gpu-node's onnxruntime graphs ({@link DenseModel}) and core's decode
 * attention ({@link attendKvCache}, the kernels the memory-node runs) called
 * directly on KV caches in this process's memory, so the only difference
 * from the local cluster is the split: processes, gRPC, serialisation and
 * the coordinator.
 */
import { attendKvCache, createAttentionScratch } from "@tessera/attention";
import type { ModelShape } from "@tessera/core";
import { openModel } from "@tessera/model";
import { DenseModel } from "@tessera/gpu-node";

/** Seconds spent in each part of the timed steps. */
export interface StepTimes {
  steps: number;
  /** Wall time of the steps (embedding, graphs, attention, argmax). */
  seconds: number;
  /** onnxruntime runs of the dense graphs (pre, post, head) and the embedding. */
  denseSeconds: number;
  /** {@link attendKvCache} calls, K/V appends included. */
  attentionSeconds: number;
}

/** The outcome of {@link InProcessModel.generate}. */
export interface InProcessRun {
  /** Greedy tokens generated per sequence (the first from prefill). */
  tokens: number[][];
  /** Decode steps only (prefill excluded). */
  decode: StepTimes;
}

function argmaxRow(x: Float32Array, row: number, width: number): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0, o = row * width; i < width; i++) {
    const v = x[o + i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** A model's dense graphs plus in-process KV caches and attention. */
export class InProcessModel {
  private constructor(
    readonly dense: DenseModel,
    readonly shape: ModelShape,
  ) {}

  /**
   * Loads `path` (llama2.c file or Hugging Face folder) into onnxruntime
   * sessions as a gpu-node does (`openModel`, tensors read layer by layer,
   * default weight dtype of the CPU provider).
   */
  static async load(path: string): Promise<InProcessModel> {
    const source = await openModel(path);
    const dense = await DenseModel.create(source);
    return new InProcessModel(dense, source.shape);
  }

  /**
   * Bytes of weights read per decode step: every layer's and the head's, as
   * held (the embedding, only gathered row by row, is left out).
   */
  get streamedWeightBytes(): number {
    const { vocabSize, dim } = this.shape;
    const embedding = this.dense.embeds ? vocabSize * dim * (this.dense.embeddingDtype === "F32" ? 4 : 2) : 0;
    return this.dense.weightBytes - embedding;
  }

  /**
   * Greedy generation of `maxTokens` tokens for each prompt (token ids, BOS
   * included), as the cluster does it: one prefill step of all prompts
   * (untimed), then `maxTokens - 1` timed decode steps of the whole batch.
   * Sequences never stop early (no EOS check), so every step has the full batch.
   */
  async generate(prompts: number[][], maxTokens: number): Promise<InProcessRun> {
    const { dim, nHeads, nKvHeads, headDim, nLayers, vocabSize } = this.shape;
    const dims = { nHeads, nKvHeads, headDim };
    const kvRow = nKvHeads * headDim;
    const qDim = nHeads * headDim;
    const B = prompts.length;
    const scratch = createAttentionScratch();
    const caches = prompts.map((p) => {
      const n = (p.length + maxTokens) * kvRow;
      return Array.from({ length: nLayers }, () => ({ k: new Float32Array(n), v: new Float32Array(n) }));
    });
    const times: StepTimes = { steps: 0, seconds: 0, denseSeconds: 0, attentionSeconds: 0 };
    // Work buffers reused from step to step, as the gpu-node's Workspace.
    let bufs: { T: number; q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array; x: Float32Array[] } = {
      T: -1,
      q: new Float32Array(0),
      k: new Float32Array(0),
      v: new Float32Array(0),
      o: new Float32Array(0),
      x: [],
    };
    const logits = new Float32Array(B * vocabSize);

    // One step: rows of sequence i are [row0[i], row0[i] + counts[i]), first at position start[i].
    const step = async (tokens: number[], counts: number[], start: number[]): Promise<number[]> => {
      const T = tokens.length;
      const row0: number[] = [];
      const positions = new BigInt64Array(T);
      let r = 0;
      counts.forEach((c, i) => {
        row0.push(r);
        for (let j = 0; j < c; j++) positions[r + j] = BigInt(start[i]! + j);
        r += c;
      });
      if (bufs.T !== T) {
        const f = (n: number) => new Float32Array(n);
        bufs = { T, q: f(T * qDim), k: f(T * kvRow), v: f(T * kvRow), o: f(T * qDim), x: [f(T * dim), f(T * dim)] };
      }
      const { o } = bufs;
      let td = performance.now();
      let x = this.dense.embed(tokens, bufs.x[0]);
      let dense = performance.now() - td;
      let attention = 0;
      for (let layer = 0; layer < nLayers; layer++) {
        td = performance.now();
        const { q, k, v } = await this.dense.pre(layer, x, positions, bufs);
        const ta = performance.now();
        dense += ta - td;
        for (let i = 0; i < B; i++) {
          const c = caches[i]![layer]!;
          const rows = [row0[i]!, row0[i]! + counts[i]!];
          c.k.set(k.subarray(rows[0]! * kvRow, rows[1]! * kvRow), start[i]! * kvRow);
          c.v.set(v.subarray(rows[0]! * kvRow, rows[1]! * kvRow), start[i]! * kvRow);
          attendKvCache(
            dims,
            { q, qRow: row0[i]!, nQueries: counts[i]!, startPos: start[i]! },
            c.k,
            c.v,
            o,
            row0[i]!,
            scratch,
          );
        }
        td = performance.now();
        attention += td - ta;
        x = await this.dense.post(layer, x, o, bufs.x[(layer + 1) % 2]);
        dense += performance.now() - td;
      }
      td = performance.now();
      let last = x;
      if (T !== B) {
        last = new Float32Array(B * dim);
        for (let i = 0; i < B; i++) {
          const end = row0[i]! + counts[i]!;
          last.set(x.subarray((end - 1) * dim, end * dim), i * dim);
        }
      }
      await this.dense.head(last, logits);
      dense += performance.now() - td;
      times.denseSeconds += dense / 1000;
      times.attentionSeconds += attention / 1000;
      return Array.from({ length: B }, (_, i) => argmaxRow(logits, i, vocabSize));
    };

    let next = await step(
      prompts.flat(),
      prompts.map((p) => p.length),
      prompts.map(() => 0),
    );
    const out = next.map((t) => [t]);
    times.denseSeconds = 0;
    times.attentionSeconds = 0;
    const t0 = performance.now();
    for (let s = 1; s < maxTokens; s++) {
      next = await step(
        next,
        prompts.map(() => 1),
        prompts.map((p) => p.length + s - 1),
      );
      next.forEach((t, i) => out[i]!.push(t));
      times.steps++;
    }
    times.seconds = (performance.now() - t0) / 1000;
    return { tokens: out, decode: times };
  }

  /** Releases the onnxruntime sessions. */
  release(): Promise<void> {
    return this.dense.release();
  }
}
