/** The ONNX builder: its bytes parse back as the model it was given, and onnxruntime runs them. */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { fromBinary, onnx } from "@tessera/proto";
import { OnnxGraphBuilder, ONNX_IR_VERSION, ONNX_OPSET, transpose, transposeConcat } from "../src/index.js";

function tinyGraph(): OnnxGraphBuilder {
  const g = new OnnxGraphBuilder("tiny");
  const x = g.input("x", "float32", ["T", 3]);
  const w = g.f32("w", new Float32Array([1, 2, 3, 4, 5, 6]), [3, 2]);
  const shape = g.i64("shape", [-1, 1, 2]);
  const y = g.op("Add", [g.op("MatMul", [x, w]), g.f32("half", new Float32Array([0.5]), [])]);
  g.op("Reshape", [y, shape], {}, "y");
  g.output("y", "float32", ["T", 1, 2]);
  return g;
}

test("toBytes writes a ModelProto whose graph holds the nodes, inputs, outputs and every initializer", () => {
  const g = tinyGraph();
  const model = fromBinary(onnx.ModelProtoSchema, g.toBytes());
  assert.equal(model.irVersion, BigInt(ONNX_IR_VERSION));
  assert.deepEqual(
    model.opsetImport.map((o) => [o.domain, o.version]),
    [["", BigInt(ONNX_OPSET)]],
  );
  const graph = model.graph!;
  assert.equal(graph.name, "tiny");
  assert.deepEqual(
    graph.node.map((n) => n.opType),
    ["MatMul", "Add", "Reshape"],
  );
  assert.deepEqual(
    graph.input.map((i) => i.name),
    ["x"],
  );
  assert.deepEqual(
    graph.output.map((i) => i.name),
    ["y"],
  );
  const dims = graph.input[0]!.type!.value.value!.shape!.dim.map((d) => d.value.value);
  assert.deepEqual(dims, ["T", 3n]);
  assert.deepEqual(
    graph.initializer.map((t) => [t.name, t.dataType, t.dims, t.rawData.length]),
    [
      ["w", onnx.TensorProto_DataType.FLOAT, [3n, 2n], 24],
      ["shape", onnx.TensorProto_DataType.INT64, [3n], 24],
      ["half", onnx.TensorProto_DataType.FLOAT, [], 4],
    ],
  );
  const w = graph.initializer[0]!.rawData;
  assert.deepEqual(new Float32Array(w.slice().buffer), new Float32Array([1, 2, 3, 4, 5, 6]));
  assert.equal(g.initializerBytes, 52);
});

test("onnxruntime runs a built graph over a symbolic batch dimension", async () => {
  const session = await ort.InferenceSession.create(tinyGraph().toBytes());
  try {
    const r = await session.run({ x: new ort.Tensor("float32", new Float32Array([1, 0, 0, 0, 1, 1]), [2, 3]) });
    assert.deepEqual(r["y"]!.dims, [2, 1, 2]);
    assert.deepEqual(r["y"]!.data, new Float32Array([1.5, 2.5, 8.5, 10.5]));
  } finally {
    await session.release();
  }
});

test("a value defined twice is refused, naming it", () => {
  const g = new OnnxGraphBuilder("dup");
  g.input("x", "float32", [1]);
  assert.throws(() => g.f32("x", new Float32Array(1), [1]), { message: "graph dup: value x is defined twice" });
  assert.throws(() => g.f32("w", new Float32Array(2), [3]), {
    name: "RangeError",
    message: "initializer w: dims [3] need 3 values, got 2",
  });
});

test("transpose and transposeConcat turn [out, in] weights into [in, out]", () => {
  // [2, 3] -> [3, 2]
  assert.deepEqual(transpose(new Float32Array([1, 2, 3, 4, 5, 6]), 2, 3), new Float32Array([1, 4, 2, 5, 3, 6]));
  // 37 x 19 crosses block edges.
  const w = Float32Array.from({ length: 37 * 19 }, (_, i) => i);
  const t = transpose(w, 37, 19);
  for (let r = 0; r < 37; r++) for (let c = 0; c < 19; c++) assert.equal(t[c * 37 + r], w[r * 19 + c]);
  // [1, 2] and [2, 2] side by side -> [2, 3]
  const fused = transposeConcat(
    [
      { w: new Float32Array([1, 2]), rows: 1 },
      { w: new Float32Array([3, 4, 5, 6]), rows: 2 },
    ],
    2,
  );
  assert.deepEqual(fused, new Float32Array([1, 3, 5, 2, 4, 6]));
});
