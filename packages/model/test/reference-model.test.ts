import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ReferenceModel, argmax, createSampler, loadCheckpoint, loadTokenizer } from "../src/index.js";

/** The shared test models, beside the repository (../shared/models). */
const MODELS = fileURLToPath(new URL("../../../../shared/models/", import.meta.url));

const checkpoint = await loadCheckpoint(join(MODELS, "stories260K.bin"));
const tokenizer = await loadTokenizer(join(MODELS, "tok512.bin"), 512);

/**
 * llama2.c run.c's output for stories260K, greedy, from BOS, 256 positions
 * (../shared/models/README.md). run.c ends with printf("\n") after the loop;
 * that newline is not part of the decoded tokens, so it is not here.
 */
const REFERENCE_TEXT = `Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she said, "I'm sorry, mom. I didn't know what to do." Her mom said, "Don't worry, Lily. We can help you.`;

/** run.c's generate loop: forced prompt tokens, then sampled ones, until `steps` positions or BOS. */
function generate(sample: (logits: Float32Array) => number, steps: number, prompt: number[] = [1]): number[] {
  const model = new ReferenceModel(checkpoint);
  const state = model.createState(steps);
  const out: number[] = [];
  let token = prompt[0]!;
  for (let pos = 0; pos < steps; pos++) {
    const logits = model.forward(state, token, pos);
    const next = pos < prompt.length - 1 ? prompt[pos + 1]! : sample(logits);
    if (next === 1) break;
    out.push(next);
    token = next;
  }
  return out;
}

test("greedy from BOS for 256 positions reproduces run.c's text exactly", () => {
  const tokens = generate(argmax, 256);
  assert.equal(tokens.length, 256); // run.c does not meet BOS in these 256 positions
  const decoder = tokenizer.createDecoder();
  const text = tokens.map((t) => decoder.push(t)).join("") + decoder.flush();
  assert.equal(text, REFERENCE_TEXT);
});

test("logits match run.c (gcc, f32) at positions 0 and 200", () => {
  // logits[0..8) printed with %.9g by run.c's forward on the greedy path.
  const atPos0 = [-6.22291136, 8.4043417, -6.22373724, -6.22254181, -6.22195101, -6.22287512, -6.22187996, -6.22341633];
  const atPos200 = [
    -17.5350456, 2.06006169, -17.5337563, -17.5363007, -17.5353146, -17.5349884, -17.5349846, -17.5351791,
  ];
  const model = new ReferenceModel(checkpoint);
  const state = model.createState(256);
  let token = 1;
  for (let pos = 0; pos <= 200; pos++) {
    const logits = model.forward(state, token, pos);
    const expected = pos === 0 ? atPos0 : pos === 200 ? atPos200 : undefined;
    if (expected) {
      expected.forEach((v, i) =>
        assert.ok(Math.abs(logits[i]! - v) < 2e-5, `pos ${pos} logit ${i}: ${logits[i]} vs ${v}`),
      );
    }
    token = argmax(logits);
  }
});

test("seeded sampling gives run.c's tokens (temperature + top-p, and multinomial)", () => {
  // Token ids printed by run.c's generate loop compiled with gcc, 64 positions, from BOS.
  const topP = createSampler({ vocabSize: 512, temperature: 0.8, topP: 0.9, seed: 42 });
  assert.deepEqual(
    generate((l) => topP.sample(l), 64).join(" "),
    "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 262 379 426 385 328 " +
      "432 317 439 419 357 267 341 311 267 259 411 412 402 270 288 267 280 323 353 411 267 422 419 269 268 420 299 312 267 265 262 379",
  );
  const mult = createSampler({ vocabSize: 512, temperature: 1, topP: 0, seed: 1234 });
  assert.deepEqual(
    generate((l) => mult.sample(l), 64).join(" "),
    "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 298 414 297 327 261 324 412 331 373 280 294 419 322 " +
      "261 370 282 309 426 385 328 432 358 272 277 264 261 262 333 416 322 311 280 414 451 422 262 411 412 426 291 263 271 411 286 384",
  );
});

test("forward rejects tokens and positions outside its range", () => {
  const model = new ReferenceModel(checkpoint);
  const state = model.createState(4);
  assert.throws(() => model.forward(state, 512, 0), /token 512 is outside \[0, 512\)/);
  assert.throws(() => model.forward(state, 1, 4), /position 4 is outside the state's cache \[0, 4\)/);
  assert.deepEqual(model.shape, checkpoint.shape);
});

test("q/k/v biases (Qwen2 layout) change the reference model's logits; zero biases do not", async () => {
  const { synthesizeWeights } = await import("../src/index.js");
  const shape = {
    ...checkpoint.shape,
    dim: 32,
    hiddenDim: 64,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 2,
    headDim: 8,
    vocabSize: 40,
    seqLen: 8,
  };
  const withBias = synthesizeWeights(shape, 6, { qkvBias: true });
  const noBias = { ...withBias, layers: withBias.layers.map(({ bq: _q, bk: _k, bv: _v, ...rest }) => rest) };
  const zeroBias = {
    ...withBias,
    layers: withBias.layers.map((l) => ({
      ...l,
      bq: new Float32Array(l.bq!.length),
      bk: new Float32Array(l.bk!.length),
      bv: new Float32Array(l.bv!.length),
    })),
  };
  const run = (weights: typeof withBias) => {
    const m = new ReferenceModel({ shape, weights });
    const s = m.createState();
    return [3, 9, 27].map((tok, pos) => m.forward(s, tok, pos).slice());
  };
  const [a, b, z] = [run(withBias), run(noBias), run(zeroBias)];
  assert.deepEqual(z, b);
  const maxDiff = Math.max(...a.flatMap((row, i) => Array.from(row, (v, j) => Math.abs(v - b[i]![j]!))));
  assert.ok(maxDiff > 0.1, `biases moved the logits by only ${maxDiff}`);
});
