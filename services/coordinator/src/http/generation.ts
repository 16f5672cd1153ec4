/**
 * One completions or chat request run through the coordinator's in-process
 * Generate (the job worker's path, so tokens equal `tessera run`'s): the
 * body's sampling as SamplingParams, `n` copies of each prompt, `stop`
 * strings cut on the decoded text, each token's text handed on as it comes
 * (streaming), and the choices with OpenAI's usage counts.
 */
import { randomInt } from "node:crypto";
import { readModelHeader } from "@tessera/model";
import type { GenAiOperation } from "../engine/index.js";
import { GenerateRequestSchema, create, type Result } from "@tessera/proto";
import type { CoordinatorService } from "../coordinator.js";
import type { ServedModel } from "../served-models.js";
import { OpenAiError, invalidRequest } from "./errors.js";
import { UNSUPPORTED, type CommonBody } from "./schemas.js";
import { StopMatcher } from "./stop-matcher.js";

/** A request's sampling, as Tessera runs it. */
export interface Sampling {
  /** 0: the coordinator's default. */
  maxTokens: number;
  temperature: number;
  topP: number;
  /** run.c's xorshift seed (>= 1); copy j of a prompt gets seed + j. */
  seed: number;
  stop: string[];
  /** Choices per prompt. */
  n: number;
}

/** OpenAI's usage counts (prompt tokens with BOS, once per prompt). */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** One finished choice. */
export interface Choice {
  index: number;
  text: string;
  finishReason: "stop" | "length";
}

/** Gets each choice's text as it grows, and each choice once finished (streaming). */
export interface ChoiceListener {
  delta(index: number, text: string): void;
  finished(choice: Choice): void;
}

/**
 * The sampling of `body`; OpenAI's defaults (temperature 1, top_p 1) where
 * it gives none, `maxTokens` `defaultMaxTokens` (0: the coordinator's).
 * @throws OpenAiError 400 naming the first parameter Tessera does not
 *   implement that is set to anything but its no-op value.
 */
export function samplingOf(body: CommonBody, maxTokens: number | null | undefined, defaultMaxTokens: number): Sampling {
  for (const [name, noOps] of Object.entries(UNSUPPORTED)) {
    const v = body[name];
    if (v === undefined || v === null || noOps.includes(v) || isEmpty(v)) continue;
    throw invalidRequest(name, `${name} is not supported by Tessera (see docs/operations.md, "HTTP API")`);
  }
  const stop = body.stop === undefined || body.stop === null ? [] : [body.stop].flat();
  return {
    maxTokens: maxTokens ?? defaultMaxTokens,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    seed: body.seed ?? randomInt(1, 2 ** 31),
    stop,
    n: body.n ?? 1,
  };
}

function isEmpty(v: unknown): boolean {
  return typeof v === "object" && v !== null && Object.keys(v).length === 0;
}

/**
 * Runs `prompts` (texts, BOS added by the tokenizer) on `served` for
 * tenant `tenant`; choice `i * n + j` is copy j of prompt i.
 * Resolves the choices in index order and the usage.
 * @throws OpenAiError for a prompt that failed (its Result's error), and
 *   RpcError as CoordinatorService.generate (CANCELLED when `signal` aborts).
 */
export async function generateChoices(
  coordinator: CoordinatorService,
  run: {
    served: ServedModel;
    tenant: string | undefined;
    signal: AbortSignal;
    param: string;
    operation?: GenAiOperation;
  },
  prompts: readonly string[],
  s: Sampling,
  listener?: ChoiceListener,
): Promise<{ choices: Choice[]; usage: Usage }> {
  const inputs = prompts.flatMap((prompt, i) =>
    Array.from({ length: s.n }, (_, j) => ({
      id: String(i * s.n + j),
      prompt,
      ...(j > 0 ? { seed: BigInt(s.seed + j) } : {}),
    })),
  );
  const matchers = new Map(inputs.map((p) => [p.id, new StopMatcher(s.stop)]));
  const results = new Map<string, Result>();
  const choices = new Map<string, Choice>();
  const request = create(GenerateRequestSchema, {
    modelPath: run.served.name,
    prompts: inputs,
    sampling: { maxTokens: s.maxTokens, temperature: s.temperature, topP: s.topP, seed: BigInt(s.seed) },
  });
  await coordinator.generate(request, {
    signal: run.signal,
    tenant: run.tenant,
    operation: run.operation,
    emit(event) {
      if (event.event?.case !== "result") return;
      const r = event.event.value as Result;
      results.set(r.id, r);
      if (r.finishReason === "error") return;
      const m = matchers.get(r.id)!;
      const { text, rest } = m.finish(r.completion);
      if (rest) listener?.delta(Number(r.id), rest);
      const choice: Choice = { index: Number(r.id), text, finishReason: m.stopped ? "stop" : asReason(r) };
      choices.set(r.id, choice);
      listener?.finished(choice);
    },
    onToken(id, _token, text) {
      const m = matchers.get(id);
      if (!m) return;
      const safe = m.push(text);
      if (safe) listener?.delta(Number(id), safe);
      return m.stopped ? "stop" : undefined;
    },
  });
  for (const p of inputs) if (!choices.has(p.id)) await failed(p.id, results.get(p.id), run);
  return { choices: inputs.map((p) => choices.get(p.id)!), usage: usageOf(inputs, s.n, results) };
}

function asReason(r: Result): "stop" | "length" {
  return r.finishReason === "length" ? "length" : "stop";
}

/**
 * A prompt's error Result as the request's error: a prompt over the
 * model's context (its header's seq_len) is OpenAI's 400
 * `context_length_exceeded`; any other failure a 500 with its message.
 */
async function failed(id: string, r: Result | undefined, run: { served: ServedModel; param: string }): Promise<never> {
  if (!r) throw new OpenAiError(500, "server_error", `choice ${id}: the coordinator sent no result`);
  const seqLen = await readModelHeader(run.served.modelPath).then(
    (h) => h.shape.seqLen,
    () => Infinity,
  );
  if (r.promptTokenIds.length >= seqLen) {
    throw invalidRequest(
      run.param,
      `This model's maximum context length is ${seqLen} tokens; the prompt has ${r.promptTokenIds.length}`,
      "context_length_exceeded",
    );
  }
  throw new OpenAiError(500, "server_error", r.error || "generation failed", run.param);
}

function usageOf(inputs: readonly { id: string }[], n: number, results: Map<string, Result>): Usage {
  let prompt = 0;
  let completion = 0;
  for (const [k, p] of inputs.entries()) {
    const r = results.get(p.id);
    if (!r) continue;
    if (k % n === 0) prompt += r.promptTokenIds.length;
    completion += r.completionTokenIds.length;
  }
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}
