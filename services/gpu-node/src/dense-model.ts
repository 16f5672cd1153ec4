/**
 * The onnxruntime sessions of one layer range of a model: what a gpu-node
 * runs, and what an in-process baseline (attention computed locally) can run
 * the same way.
 */
import * as ort from "onnxruntime-node";
import { ConfigError, type Checkpoint, type ModelShape } from "@tessera/core";
import { Code } from "@tessera/proto";
import { HEAD, POST, PRE, buildHeadGraph, buildPostAttentionGraph, buildPreAttentionGraph } from "./llama-graphs.js";

/** Execution providers a gpu-node can ask onnxruntime for. */
export type ExecutionProvider = "cpu" | "cuda";

/** Which part of a model a {@link DenseModel} holds, and how it runs. */
export interface DenseModelOptions {
  /** First layer held (inclusive). @default 0 */
  layerStart?: number;
  /** End of the layer range (exclusive). @default shape.nLayers */
  layerEnd?: number;
  /** Keep the token embedding (first pipeline stage). @default true */
  embed?: boolean;
  /** Build the final norm + classifier (last pipeline stage). @default true */
  head?: boolean;
  /** @default "cpu" */
  executionProvider?: ExecutionProvider;
  /** onnxruntime intra-op threads per session. @default onnxruntime's (one per core) */
  intraOpThreads?: number;
}

/** q, k, v of a pre-attention run: [T, n_heads, head_dim], [T, n_kv_heads, head_dim] ×2, f32. */
export interface Qkv {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

/** Thrown when onnxruntime cannot use the requested execution provider. */
export class ExecutionProviderError extends ConfigError {
  override name = "ExecutionProviderError";
  constructor(provider: string, detail: string, options?: { cause?: unknown }) {
    super("executionProvider", `"${provider}" is not available in this onnxruntime-node build: ${detail}`);
    if (options?.cause !== undefined) this.cause = options.cause;
    // The node, not the request, lacks it.
    this.rpcCode = Code.FAILED_PRECONDITION;
  }
}

/**
 * Sessions of the pre- and post-attention graphs of layers
 * [layerStart, layerEnd), and optionally the token embedding (a copy, so the
 * checkpoint's file buffer can be freed) and the head graph.
 *
 * Run methods take row-major f32 batches of T rows and, optionally, output
 * buffers of exactly the output's size to reuse (they must not alias an
 * input); they return the output arrays. Sessions run one at a time on the
 * calling thread's event loop turn (onnxruntime-node's `run` is synchronous
 * inside a setImmediate), so callers need no locking, but must not reuse an
 * output buffer that is still being read.
 */
export class DenseModel {
  private constructor(
    readonly shape: ModelShape,
    readonly layerStart: number,
    readonly layerEnd: number,
    readonly executionProvider: ExecutionProvider,
    /**
     * Bytes of f32 weights this model holds: its layers' norms and
     * projections, the embedding and the final norm + classifier when held
     * (both, even when the checkpoint shares them). RoPE tables and other
     * graph constants are not counted.
     */
    readonly weightBytes: number,
    private readonly embedding: Float32Array | undefined,
    private readonly preSessions: ort.InferenceSession[],
    private readonly postSessions: ort.InferenceSession[],
    private headSession: ort.InferenceSession | undefined,
  ) {}

  /**
   * Builds the graphs of `checkpoint`'s layer range and creates their
   * sessions (weights are copied into the graphs once, here).
   * @throws RangeError for a layer range outside the model;
   *   {@link ExecutionProviderError} when the provider cannot be used;
   *   onnxruntime's Error when a graph does not load.
   */
  static async create(checkpoint: Checkpoint, options: DenseModelOptions = {}): Promise<DenseModel> {
    const shape = checkpoint.shape;
    const layerStart = options.layerStart ?? 0;
    const layerEnd = options.layerEnd ?? shape.nLayers;
    const provider = options.executionProvider ?? "cpu";
    if (!(
      Number.isInteger(layerStart) &&
      Number.isInteger(layerEnd) &&
      0 <= layerStart &&
      layerStart <= layerEnd &&
      layerEnd <= shape.nLayers
    )) {
      throw new RangeError(
        `layer range [${layerStart}, ${layerEnd}) is not inside the model's ${shape.nLayers} layers`,
      );
    }
    if (provider !== "cpu") {
      const backend = ort.listSupportedBackends().find((b) => b.name === provider);
      if (!backend)
        throw new ExecutionProviderError(
          provider,
          `this platform's build supports only ${ort
            .listSupportedBackends()
            .map((b) => b.name)
            .join(", ")}`,
        );
    }
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      executionProviders: [provider],
      graphOptimizationLevel: "all",
      ...(options.intraOpThreads !== undefined ? { intraOpNumThreads: options.intraOpThreads } : {}),
      // A gpu-node idles while attention nodes work; spinning intra-op
      // threads would burn the cores those nodes (or other sessions) need.
      extra: { session: { intra_op: { allow_spinning: "0" } } },
    };
    const sessions: ort.InferenceSession[] = [];
    const createSession = async (bytes: Uint8Array): Promise<ort.InferenceSession> => {
      try {
        const s = await ort.InferenceSession.create(bytes, sessionOptions);
        sessions.push(s);
        return s;
      } catch (err) {
        if (provider !== "cpu")
          throw new ExecutionProviderError(provider, (err as Error).message.split("\n")[0]!, { cause: err });
        throw err;
      }
    };
    try {
      const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = shape;
      const perLayer = 2 * dim + 2 * dim * nHeads * headDim + 2 * dim * nKvHeads * headDim + 3 * dim * hiddenDim;
      let weightBytes = 4 * (layerEnd - layerStart) * perLayer;
      const pre: ort.InferenceSession[] = [];
      const post: ort.InferenceSession[] = [];
      for (let l = layerStart; l < layerEnd; l++) {
        const weights = checkpoint.weights.layers[l]!;
        pre.push(await createSession(buildPreAttentionGraph(shape, weights, l).toBytes()));
        post.push(await createSession(buildPostAttentionGraph(shape, weights, l).toBytes()));
      }
      let head: ort.InferenceSession | undefined;
      if (options.head ?? true) {
        head = await createSession(
          buildHeadGraph(shape, checkpoint.weights.rmsFinal, checkpoint.weights.classifier).toBytes(),
        );
        weightBytes += 4 * (dim + vocabSize * dim);
      }
      let embedding: Float32Array | undefined;
      if (options.embed ?? true) {
        embedding = checkpoint.weights.tokenEmbedding.slice();
        weightBytes += embedding.byteLength;
      }
      return new DenseModel(shape, layerStart, layerEnd, provider, weightBytes, embedding, pre, post, head);
    } catch (err) {
      await Promise.allSettled(sessions.map((s) => s.release()));
      throw err;
    }
  }

  /** Whether this model embeds token ids. */
  get embeds(): boolean {
    return this.embedding !== undefined;
  }

  /** Whether this model holds the head (final norm + classifier). */
  get hasHead(): boolean {
    return this.headSession !== undefined;
  }

  /**
   * Token embeddings: row i of the result is the embedding row of tokens[i].
   * @returns [tokens.length, dim] f32 (`out` when given).
   * @throws RangeError for a token outside [0, vocab_size), or when this model does not embed.
   */
  embed(tokens: ArrayLike<number>, out?: Float32Array): Float32Array {
    const emb = this.embedding;
    if (!emb) throw new RangeError("this model does not hold the token embedding");
    const { dim, vocabSize } = this.shape;
    const x = out ?? new Float32Array(tokens.length * dim);
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (!(Number.isInteger(t) && t >= 0 && t < vocabSize))
        throw new RangeError(`token ${t} at index ${i} is outside the vocabulary [0, ${vocabSize})`);
      x.set(emb.subarray(t * dim, (t + 1) * dim), i * dim);
    }
    return x;
  }

  /**
   * Pre-attention graph of `layer` (a global layer index in this model's range).
   * @param x [T, dim] f32
   * @param positions [T] int64, each < seq_len
   * @returns q [T, n_heads, head_dim], k and v [T, n_kv_heads, head_dim], RoPE applied to q and k.
   */
  async pre(layer: number, x: Float32Array, positions: BigInt64Array, out?: Qkv): Promise<Qkv> {
    const { dim, nHeads, nKvHeads, headDim } = this.shape;
    const T = positions.length;
    const session = this.layerSession(this.preSessions, layer);
    const feeds = {
      [PRE.x]: new ort.Tensor("float32", checkRows(x, T, dim, "x"), [T, dim]),
      [PRE.positions]: new ort.Tensor("int64", positions, [T]),
    };
    const fetches = out
      ? {
          [PRE.q]: new ort.Tensor("float32", checkRows(out.q, T, nHeads * headDim, "q"), [T, nHeads, headDim]),
          [PRE.k]: new ort.Tensor("float32", checkRows(out.k, T, nKvHeads * headDim, "k"), [T, nKvHeads, headDim]),
          [PRE.v]: new ort.Tensor("float32", checkRows(out.v, T, nKvHeads * headDim, "v"), [T, nKvHeads, headDim]),
        }
      : undefined;
    const r = fetches ? await session.run(feeds, fetches) : await session.run(feeds);
    if (out) return out;
    return { q: r[PRE.q]!.data as Float32Array, k: r[PRE.k]!.data as Float32Array, v: r[PRE.v]!.data as Float32Array };
  }

  /**
   * Post-attention graph of `layer`.
   * @param x [T, dim] f32, the residual stream that went into {@link pre}
   * @param o [T, n_heads · head_dim] f32, attention output
   * @returns [T, dim] f32, the residual stream after the layer (`out` when given)
   */
  async post(layer: number, x: Float32Array, o: Float32Array, out?: Float32Array): Promise<Float32Array> {
    const { dim, nHeads, headDim } = this.shape;
    const T = x.length / dim;
    const session = this.layerSession(this.postSessions, layer);
    const feeds = {
      [POST.x]: new ort.Tensor("float32", checkRows(x, T, dim, "x"), [T, dim]),
      [POST.o]: new ort.Tensor("float32", checkRows(o, T, nHeads * headDim, "o"), [T, nHeads * headDim]),
    };
    if (out) {
      await session.run(feeds, { [POST.y]: new ort.Tensor("float32", checkRows(out, T, dim, "y"), [T, dim]) });
      return out;
    }
    return (await session.run(feeds))[POST.y]!.data as Float32Array;
  }

  /**
   * Final RMSNorm and classifier.
   * @param x [N, dim] f32
   * @returns [N, vocab_size] f32 logits (`out` when given)
   * @throws RangeError when this model does not hold the head.
   */
  async head(x: Float32Array, out?: Float32Array): Promise<Float32Array> {
    if (!this.headSession) throw new RangeError("this model does not hold the head");
    const { dim, vocabSize } = this.shape;
    const N = x.length / dim;
    const feeds = { [HEAD.x]: new ort.Tensor("float32", checkRows(x, N, dim, "x"), [N, dim]) };
    if (out) {
      await this.headSession.run(feeds, {
        [HEAD.logits]: new ort.Tensor("float32", checkRows(out, N, vocabSize, "logits"), [N, vocabSize]),
      });
      return out;
    }
    return (await this.headSession.run(feeds))[HEAD.logits]!.data as Float32Array;
  }

  /** Releases every session; the model is unusable after. Idempotent. */
  async release(): Promise<void> {
    const all = [...this.preSessions, ...this.postSessions, ...(this.headSession ? [this.headSession] : [])];
    this.preSessions.length = 0;
    this.postSessions.length = 0;
    this.headSession = undefined;
    await Promise.all(all.map((s) => s.release()));
  }

  private layerSession(sessions: ort.InferenceSession[], layer: number): ort.InferenceSession {
    const s = sessions[layer - this.layerStart];
    if (!s || layer < this.layerStart)
      throw new RangeError(
        `layer ${layer} is not in this model's range [${this.layerStart}, ${this.layerEnd}) or the model is released`,
      );
    return s;
  }
}

function checkRows(a: Float32Array, rows: number, cols: number, what: string): Float32Array {
  if (!Number.isInteger(rows) || a.length !== rows * cols)
    throw new RangeError(`${what}: expected [${rows}, ${cols}] (${rows * cols} values), got ${a.length}`);
  return a;
}
