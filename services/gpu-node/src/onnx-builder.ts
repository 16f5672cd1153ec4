/**
 * A tiny builder of ONNX models (the subset in proto/onnx/onnx_subset.proto):
 * constant initializers, nodes with attributes, graph inputs/outputs with
 * symbolic dimensions, serialised to ModelProto bytes that
 * `InferenceSession.create(bytes)` loads. Generic: it knows nothing of Llama.
 */
import { create, onnx, toBinary, type MessageInitShape } from "@tessera/proto";

/** IR version written: 8 (ONNX 1.10+), read by every onnxruntime since 1.10. */
export const ONNX_IR_VERSION = 8;
/**
 * ai.onnx opset written. 17 is the newest opset whose ops we use (Split with a
 * `split` input, ReduceMean with an `axes` attribute) unchanged, and
 * onnxruntime 1.30 implements it on CPU and CUDA.
 */
export const ONNX_OPSET = 17;

/** Element types the builder writes (values of onnx.TensorProto.DataType). */
export type ElemType = "float32" | "float16" | "int64";

const ELEM: Record<ElemType, number> = {
  float32: onnx.TensorProto_DataType.FLOAT,
  float16: onnx.TensorProto_DataType.FLOAT16,
  int64: onnx.TensorProto_DataType.INT64,
};

/** ONNX data type number of an element type (e.g. for Cast's `to` attribute). */
export function onnxDataType(t: ElemType): number {
  return ELEM[t];
}

/** A dimension of a graph input/output: a size, or a symbolic name (e.g. "T"). */
export type Dim = number | string;

/** A node attribute value: int, float, ints, floats or string (by JS type). */
export type AttrValue =
  number | bigint | string | readonly number[] | readonly bigint[] | { float: number } | { floats: readonly number[] };

/**
 * Builds one ONNX graph. Names are the graph's value names; `node` returns the
 * output names so nodes chain. `toBytes` serialises the model.
 */
export class OnnxGraphBuilder {
  private readonly nodes: MessageInitShape<typeof onnx.NodeProtoSchema>[] = [];
  private readonly initializers: { meta: MessageInitShape<typeof onnx.TensorProtoSchema>; raw: Uint8Array }[] = [];
  private readonly inputs: MessageInitShape<typeof onnx.ValueInfoProtoSchema>[] = [];
  private readonly outputs: MessageInitShape<typeof onnx.ValueInfoProtoSchema>[] = [];
  private readonly names = new Set<string>();
  private counter = 0;
  /** Bytes of initializer data added so far. */
  initializerBytes = 0;

  constructor(readonly name: string) {}

  /** A value name with `prefix` not yet defined in this graph (define it before asking again). */
  fresh(prefix: string): string {
    let n: string;
    do n = `${prefix}_${this.counter++}`;
    while (this.names.has(n));
    return n;
  }

  /** Declares a graph input of `elemType` and `dims` (numbers or symbolic names). */
  input(name: string, elemType: ElemType, dims: readonly Dim[]): string {
    this.claim(name);
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /** Declares `name` (an existing value) a graph output of `elemType` and `dims`. */
  output(name: string, elemType: ElemType, dims: readonly Dim[]): string {
    this.outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /**
   * Adds a constant f32 initializer of `dims`; the data is copied into the
   * model as little-endian raw_data (the host is little-endian, as
   * onnxruntime-node requires).
   */
  f32(name: string, data: Float32Array, dims: readonly number[]): string {
    return this.constant(
      name,
      "float32",
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      dims,
      data.length,
    );
  }

  /**
   * Adds a constant f16 initializer of `dims` from IEEE binary16 bit
   * patterns (little-endian raw_data, copied into the model).
   */
  f16(name: string, bits: Uint16Array, dims: readonly number[]): string {
    return this.constant(
      name,
      "float16",
      new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength),
      dims,
      bits.length,
    );
  }

  /** Adds a constant int64 initializer of `dims`. */
  i64(name: string, data: readonly (number | bigint)[], dims: readonly number[] = [data.length]): string {
    const arr = BigInt64Array.from(data, (v) => BigInt(v));
    return this.constant(name, "int64", new Uint8Array(arr.buffer), dims, arr.length);
  }

  /**
   * Adds a node `opType` reading `inputs` ("" for an omitted optional input)
   * and writing `nOutputs` fresh values (or the given output names).
   * Returns the output names.
   */
  node(
    opType: string,
    inputs: readonly string[],
    attrs: Record<string, AttrValue> = {},
    outputs: number | readonly string[] = 1,
  ): string[] {
    const outs =
      typeof outputs === "number"
        ? Array.from({ length: outputs }, () => this.fresh(opType.toLowerCase()))
        : [...outputs];
    outs.forEach((o) => this.claim(o));
    this.nodes.push({
      opType,
      name: `${opType}_${this.nodes.length}`,
      input: [...inputs],
      output: outs,
      attribute: Object.entries(attrs).map(([name, v]) => attribute(name, v)),
    });
    return outs;
  }

  /** {@link node} with one output: returns its name. */
  op(opType: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}, output?: string): string {
    return this.node(opType, inputs, attrs, output === undefined ? 1 : [output])[0]!;
  }

  /**
   * Serialises the graph as a ModelProto (IR {@link ONNX_IR_VERSION}, opset
   * {@link ONNX_OPSET}).
   *
   * The weights are most of the bytes, so they are not pushed through the
   * protobuf writer (which would copy them twice): the model is encoded
   * without initializers, and a second occurrence of `graph` holding only
   * the initializers is appended, each raw_data copied once into the output.
   * Protobuf parsers merge repeated occurrences of a singular message field
   * (protobuf encoding spec, "Last One Wins" for scalars, merge for
   * messages), so this is the same model.
   */
  toBytes(): Uint8Array {
    const head = toBinary(
      onnx.ModelProtoSchema,
      create(onnx.ModelProtoSchema, {
        irVersion: BigInt(ONNX_IR_VERSION),
        producerName: "tessera",
        producerVersion: "0.1.0",
        opsetImport: [{ domain: "", version: BigInt(ONNX_OPSET) }],
        graph: { name: this.name, node: this.nodes, input: this.inputs, output: this.outputs },
      }),
    );
    // GraphProto.initializer = 5; TensorProto.raw_data = 9; ModelProto.graph = 7.
    const tensors = this.initializers.map(({ meta, raw }) => {
      const m = toBinary(onnx.TensorProtoSchema, create(onnx.TensorProtoSchema, meta));
      const tensorLen = m.length + 1 + varintSize(raw.length) + raw.length;
      return { m, raw, tensorLen };
    });
    const graphLen = tensors.reduce((a, t) => a + 1 + varintSize(t.tensorLen) + t.tensorLen, 0);
    const out = new Uint8Array(head.length + 1 + varintSize(graphLen) + graphLen);
    out.set(head);
    let at = head.length;
    at = writeTagLen(out, at, 7, graphLen);
    for (const t of tensors) {
      at = writeTagLen(out, at, 5, t.tensorLen);
      out.set(t.m, at);
      at += t.m.length;
      at = writeTagLen(out, at, 9, t.raw.length);
      out.set(t.raw, at);
      at += t.raw.length;
    }
    return out;
  }

  private constant(name: string, elemType: ElemType, raw: Uint8Array, dims: readonly number[], n: number): string {
    const want = dims.reduce((a, b) => a * b, 1);
    if (want !== n)
      throw new RangeError(`initializer ${name}: dims [${dims.join(", ")}] need ${want} values, got ${n}`);
    this.claim(name);
    this.initializers.push({ meta: { name, dataType: ELEM[elemType], dims: dims.map((d) => BigInt(d)) }, raw });
    this.initializerBytes += raw.byteLength;
    return name;
  }

  private claim(name: string): void {
    if (this.names.has(name)) throw new Error(`graph ${this.name}: value ${name} is defined twice`);
    this.names.add(name);
  }
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

/** Writes a length-delimited field header (tag, then length) at `at`; returns the next offset. */
function writeTagLen(out: Uint8Array, at: number, field: number, len: number): number {
  out[at++] = (field << 3) | 2;
  let n = len;
  while (n >= 128) {
    out[at++] = (n % 128) | 128;
    n = Math.floor(n / 128);
  }
  out[at++] = n;
  return at;
}

function valueInfo(
  name: string,
  elemType: ElemType,
  dims: readonly Dim[],
): MessageInitShape<typeof onnx.ValueInfoProtoSchema> {
  return {
    name,
    type: {
      value: {
        case: "tensorType",
        value: {
          elemType: ELEM[elemType],
          shape: {
            dim: dims.map((d) =>
              typeof d === "number"
                ? { value: { case: "dimValue", value: BigInt(d) } }
                : { value: { case: "dimParam", value: d } },
            ),
          },
        },
      },
    },
  };
}

const A = onnx.AttributeProto_AttributeType;

/** Integers become INT/INTS; `{ float }`/`{ floats }` force FLOAT(S); strings STRING. */
function attribute(name: string, v: AttrValue): MessageInitShape<typeof onnx.AttributeProtoSchema> {
  if (typeof v === "string") return { name, type: A.STRING, s: new TextEncoder().encode(v) };
  if (typeof v === "bigint") return { name, type: A.INT, i: v };
  if (typeof v === "number") {
    return Number.isInteger(v) ? { name, type: A.INT, i: BigInt(v) } : { name, type: A.FLOAT, f: v };
  }
  if ("float" in v) return { name, type: A.FLOAT, f: v.float };
  if ("floats" in v) return { name, type: A.FLOATS, floats: [...v.floats] };
  return { name, type: A.INTS, ints: (v as readonly (number | bigint)[]).map((x) => BigInt(x)) };
}
