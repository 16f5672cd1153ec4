// The served-model list (served-models.ts): `--model` specs, default names,
// tokenizers, and the resolution of a request's model_path / tokenizer_path.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "@tessera/core";
import { bundled } from "@tessera/model";
import { Code, RpcError } from "@tessera/proto";
import { compileServedModels, parseServedModelSpec, resolveServedModel } from "../src/served-models.js";

test("a --model spec is [NAME=]PATH[,tokenizer=PATH][,kv=...]; a bad key is refused naming the flag", () => {
  assert.deepEqual(parseServedModelSpec("/m/a.bin"), { modelPath: "/m/a.bin" });
  assert.deepEqual(parseServedModelSpec("big=/m/a.bin,tokenizer=/m/t.json,kv=storage"), {
    name: "big",
    modelPath: "/m/a.bin",
    tokenizerPath: "/m/t.json",
    kv: "storage",
  });
  // "=" after a "/" belongs to the path.
  assert.deepEqual(parseServedModelSpec("/m/x=y.bin"), { modelPath: "/m/x=y.bin" });
  assert.throws(() => parseServedModelSpec("a=/m/a.bin,kv=gpu"), /--model: "a=\/m\/a.bin,kv=gpu": "kv=gpu" is not/);
  assert.throws(() => parseServedModelSpec("a="), ConfigError);
  assert.throws(() => parseServedModelSpec("/m/a.bin,tokenizerX"), /"tokenizerX" is not tokenizer=PATH/);
});

test("served names default to the file's name without its extension or the folder's name, and are unique", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "tessera-served-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const models = compileServedModels({
    modelPath: bundled.model,
    tokenizerPath: bundled.tokenizer,
    models: [dir, `q=${join(dir, "q.v2.bin")},tokenizer=/t/q.json`],
  });
  assert.deepEqual(
    models.map((m) => [m.name, m.tokenizerPath, m.kv]),
    [
      ["stories260K", bundled.tokenizer, "auto"],
      [dir.split("/").at(-1), bundled.tokenizer, "auto"],
      ["q", "/t/q.json", "auto"],
    ],
  );
  // The same model twice is served once; two models under one name are refused.
  assert.equal(compileServedModels({ modelPath: bundled.model, models: [bundled.model] }).length, 1);
  assert.throws(
    () => compileServedModels({ models: ["/a/m.bin", "/b/m.bin"] }),
    /models: name "m" is served twice \(\/a\/m.bin, \/b\/m.bin\)/,
  );
  assert.throws(() => compileServedModels({ models: [{ name: "a/b", modelPath: "/m.bin" }] }), /name "a\/b" is not/);
});

test("a request names a served model by name or served path; anything else opens nothing and is NOT_FOUND", () => {
  const models = compileServedModels({ modelPath: bundled.model, tokenizerPath: bundled.tokenizer });
  assert.equal(resolveServedModel(models, "", "").name, "stories260K");
  assert.equal(resolveServedModel(models, "stories260K", bundled.tokenizer).name, "stories260K");
  assert.equal(resolveServedModel(models, bundled.model, "").name, "stories260K");
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      return RpcError.from(err).code;
    }
    return undefined;
  };
  assert.equal(
    code(() => resolveServedModel(models, "/etc/passwd", "")),
    Code.NOT_FOUND,
  );
  assert.equal(
    code(() => resolveServedModel(models, "", "/etc/passwd")),
    Code.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => resolveServedModel([], "", "")),
    Code.FAILED_PRECONDITION,
  );
});
