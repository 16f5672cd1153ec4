/**
 * The onnxruntime sessions of one layer range of a model: what a gpu-node
 * runs, and what an in-process baseline (attention computed locally) can run
 * the same way.
 */
import * as ort from "onnxruntime-node";
import { ConfigError, type ModelShape } from "@tessera/core";
import {
  checkpointSource,
  decodeTensor,
  encodeTensor,
  type Checkpoint,
  type ModelSource,
  type SafetensorsDtype,
  type WeightName,
} from "@tessera/model";
import { Code, RpcError } from "@tessera/proto";
import {
  HEAD,
  POST,
  PRE,
  buildHeadGraph,
  buildPostAttentionGraph,
  buildPreAttentionGraph,
  ropeRows,
  type PostAttentionWeights,
  type PreAttentionWeights,
  type WeightDtype,
} from "./llama-graphs.js";

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
  /**
   * Element type of the projection weights and the embedding held:
   * "f16" halves them (f16 MatMul initializers with activations cast around
   * each MatMul; the embedding kept as f16 and widened per row on lookup).
   * With "f32", an embedding stored F16/BF16 in the file stays so (exact).
   * The default is {@link defaultWeightDtype} of the provider: "f16" on
   * CUDA (untested here: no GPU), "f32" on CPU, whose onnxruntime 1.30
   * kernels have no f16 MatMul on x86: it inserts Casts and folds the
   * weights back to f32 at session creation (same memory as f32, measured),
   * and with folding off casts them on every run (~3× slower).
   */
  weightDtype?: WeightDtype;
  /**
   * Stops the build when it aborts (its caller gave up): checked before each
   * session is built; the sessions built so far are released and create()
   * throws RpcError CANCELLED saying how many of the layers were built.
   */
  signal?: AbortSignal;
}

/**
 * The weight dtype a provider runs best: "f16" where onnxruntime has f16
 * MatMul kernels (CUDA), else "f32" (see {@link DenseModelOptions.weightDtype}).
 */
export function defaultWeightDtype(provider: ExecutionProvider): WeightDtype {
  return provider === "cuda" ? "f16" : "f32";
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
  /**
   * The RoPE rows of the last few position lists pre() was given (the
   * layers of a step share them), newest last; never written after they are
   * made, so a run still reading one is safe.
   */
  private readonly ropeMemo: { positions: BigInt64Array; cos: Float32Array; sin: Float32Array }[] = [];

  private constructor(
    readonly shape: ModelShape,
    readonly layerStart: number,
    readonly layerEnd: number,
    readonly executionProvider: ExecutionProvider,
    /** Element type of the projection weights and embedding held. */
    readonly weightDtype: WeightDtype,
    /**
     * Bytes of weights this model hands onnxruntime and holds itself: its
     * layers' norms (f32) and projections (`weightDtype`), biases (f32), the
     * embedding and the final norm + classifier when held (both, even when
     * the checkpoint shares them). Graph constants (RoPE rows are fed per run) are
     * not counted, nor copies an execution provider makes (the CPU provider
     * widens f16 MatMul weights to f32).
     */
    readonly weightBytes: number,
    /** Element type the token embedding is held in (F16/BF16: bit patterns in `embedding`). */
    readonly embeddingDtype: SafetensorsDtype,
    /** [vocab_size, dim]: f32 values, or f16/bf16 bit patterns. */
    private readonly embedding: Float32Array | Uint16Array | undefined,
    private readonly preSessions: ort.InferenceSession[],
    private readonly postSessions: ort.InferenceSession[],
    private headSession: ort.InferenceSession | undefined,
  ) {}

  /**
   * Builds the graphs of a layer range and creates their sessions. `model`
   * is a loaded {@link Checkpoint} or, to keep peak memory near the f32
   * weights of this range alone, a {@link ModelSource} (`openModel`): its
   * tensors are then read one layer at a time (the embedding only when
   * `embed`, the final norm and classifier only when `head`) and dropped
   * once onnxruntime holds them.
   * @throws RangeError for a layer range outside the model;
   *   {@link ExecutionProviderError} when the provider cannot be used;
   *   CheckpointError when the source file cannot be read;
   *   onnxruntime's Error when a graph does not load.
   */
  static async create(model: Checkpoint | ModelSource, options: DenseModelOptions = {}): Promise<DenseModel> {
    const source = "weights" in model ? checkpointSource(model) : model;
    const shape = source.shape;
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
    const dtype = options.weightDtype ?? defaultWeightDtype(provider);
    const wBytes = dtype === "f16" ? 2 : 4;
    const checkAborted = (built: number) => {
      if (options.signal?.aborted)
        throw new RpcError(
          Code.CANCELLED,
          `load cancelled by its caller after ${built} of ${layerEnd - layerStart} layers`,
          { cause: options.signal.reason },
        );
    };
    try {
      const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = shape;
      const matrices = 2 * dim * nHeads * headDim + 2 * dim * nKvHeads * headDim + 3 * dim * hiddenDim;
      const vectors = 2 * dim + (source.qkvBias ? nHeads * headDim + 2 * nKvHeads * headDim : 0);
      let weightBytes = (layerEnd - layerStart) * (wBytes * matrices + 4 * vectors);
      // The head first: its classifier is the largest tensor, and building its
      // session takes several transient copies of it (JS graph bytes,
      // onnxruntime's parsed model, its packed weights), best made while
      // nothing else is held.
      let head: ort.InferenceSession | undefined;
      checkAborted(0);
      if (options.head ?? true) {
        const [rmsFinal, classifier] = [await source.read("rmsFinal"), await source.read("classifier")];
        head = await createSession(buildHeadGraph(shape, rmsFinal, classifier, dtype).toBytes());
        weightBytes += 4 * dim + wBytes * vocabSize * dim;
      }
      const pre: ort.InferenceSession[] = [];
      const post: ort.InferenceSession[] = [];
      const read = (name: WeightName, l: number) => source.read(name, l);
      for (let l = layerStart; l < layerEnd; l++) {
        checkAborted(l - layerStart);
        // One graph's f32 weights and bytes at a time: each is read, built,
        // handed to onnxruntime (which copies the initializers) and dropped.
        const preWeights: PreAttentionWeights = {
          rmsAtt: await read("rmsAtt", l),
          wq: await read("wq", l),
          wk: await read("wk", l),
          wv: await read("wv", l),
          ...(source.qkvBias ? { bq: await read("bq", l), bk: await read("bk", l), bv: await read("bv", l) } : {}),
        };
        pre.push(await createSession(buildPreAttentionGraph(shape, preWeights, l, dtype).toBytes()));
        const postWeights: PostAttentionWeights = {
          wo: await read("wo", l),
          rmsFfn: await read("rmsFfn", l),
          w1: await read("w1", l),
          w2: await read("w2", l),
          w3: await read("w3", l),
        };
        post.push(await createSession(buildPostAttentionGraph(shape, postWeights, l, dtype).toBytes()));
      }
      checkAborted(layerEnd - layerStart);
      let embedding: Float32Array | Uint16Array | undefined;
      // The embedding is a row lookup in JS, not an onnxruntime op, so any
      // provider can hold it in 16 bits: in f16 with weightDtype "f16", else
      // as the file stores it (F16/BF16 values are exact in their own type).
      const embeddingDtype: SafetensorsDtype =
        dtype === "f16" ? "F16" : source.dtype === "F16" || source.dtype === "BF16" ? source.dtype : "F32";
      if (options.embed ?? true) {
        const e = await source.read("tokenEmbedding");
        // 16-bit patterns; or f32: a file source reads a fresh array, an
        // in-memory checkpoint's is copied so that it can be freed.
        embedding =
          embeddingDtype !== "F32"
            ? new Uint16Array(encodeTensor(e, embeddingDtype).buffer)
            : "weights" in model
              ? e.slice()
              : e;
        weightBytes += embedding.byteLength;
      }
      return new DenseModel(
        shape,
        layerStart,
        layerEnd,
        provider,
        dtype,
        weightBytes,
        embeddingDtype,
        embedding,
        pre,
        post,
        head,
      );
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
      const row = emb.subarray(t * dim, (t + 1) * dim);
      x.set(
        row instanceof Float32Array
          ? row
          : decodeTensor(new Uint8Array(row.buffer, row.byteOffset, 2 * dim), this.embeddingDtype),
        i * dim,
      );
    }
    return x;
  }

  /**
   * Pre-attention graph of `layer` (a global layer index in this model's range).
   * @param x [T, dim] f32
   * @param positions [T] int64, each < seq_len (their RoPE rows are made for
   *   these positions alone, and kept for the next layers)
   * @returns q [T, n_heads, head_dim], k and v [T, n_kv_heads, head_dim], RoPE applied to q and k.
   * @throws RangeError for a position outside [0, seq_len).
   */
  async pre(layer: number, x: Float32Array, positions: BigInt64Array, out?: Qkv): Promise<Qkv> {
    const { dim, nHeads, nKvHeads, headDim } = this.shape;
    const T = positions.length;
    const session = this.layerSession(this.preSessions, layer);
    const rope = this.rope(positions);
    const feeds = {
      [PRE.x]: new ort.Tensor("float32", checkRows(x, T, dim, "x"), [T, dim]),
      [PRE.cos]: new ort.Tensor("float32", rope.cos, [T, headDim / 2]),
      [PRE.sin]: new ort.Tensor("float32", rope.sin, [T, headDim / 2]),
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

  /** The RoPE rows of `positions` ({@link ropeRows}), from the memo when the same positions came lately. */
  private rope(positions: BigInt64Array): { cos: Float32Array; sin: Float32Array } {
    const memo = this.ropeMemo;
    const hit = memo.find(
      (m) => m.positions.length === positions.length && m.positions.every((p, i) => p === positions[i]),
    );
    if (hit) return hit;
    const rows = { positions: positions.slice(), ...ropeRows(this.shape, positions) };
    memo.push(rows);
    if (memo.length > 4) memo.shift();
    return rows;
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
