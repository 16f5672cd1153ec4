/**
 * The sequences of a request: each prompt tokenised, checked against the
 * model's context, and given its sampler and streaming decoder. Proto3
 * scalars cannot be absent, so 0 in the request's sampling means unset.
 * Prompts are tokenised off the event loop, on the coordinator's tokeniser
 * pool (`ctx.encodePrompts`, tokenize/tokenizer-pool.ts: fair among
 * tenants, stopped when the job is cancelled), so one large request does
 * not keep the coordinator from answering health checks, heartbeats and
 * other tenants' jobs (issue 13).
 */
import { setImmediate as nextTurn } from "node:timers/promises";
import { createDecoder, createSampler } from "@tessera/model";
import { Code, RpcError, type GenerateRequest, type PromptInput } from "@tessera/proto";
import { COORDINATOR_DEFAULTS } from "../options.js";
import type { BatchJob } from "./context.js";
import type { Output } from "./output.js";
import { createSequence, sequenceId, type Sequence } from "./sequence.js";

/**
 * Creates the sequence of every prompt of `job.request` into `job.seqs`;
 * a prompt that is too long or cannot be tokenised is finished at once
 * with an error Result (through `output`), one asking 0 tokens with "length".
 * Tokenises through `job.ctx.encodePrompts` (off the event loop), then
 * sets the sequences up, yielding to the event loop before each (a prompt
 * refused as too long emits its Result, prompt and ids, at once: 64 KiB
 * of text and ~30,000 ids take milliseconds to encode).
 * @throws RpcError CANCELLED when `job.ctx.signal` aborts; the prompts not
 *   set up by then get no sequence.
 */
export async function createSequences(job: BatchJob, output: Output): Promise<void> {
  const { request, ctx, jobId, nonce } = job;
  const { shape } = ctx.model.header;
  const { tokenizer } = ctx.model;
  const encoded = await ctx.encodePrompts(request.prompts.map((p) => p.prompt));
  for (const [index, p] of request.prompts.entries()) {
    await nextTurn();
    if (ctx.signal.aborted) throw new RpcError(Code.CANCELLED, "job cancelled");
    const s: Sequence = createSequence(index, p.id, p.prompt, sequenceId(jobId, nonce, index));
    job.seqs.push(s);
    try {
      const e = encoded[index]!;
      if ("error" in e) throw new Error(e.error);
      s.promptIds = Array.from(e.ids);
      output.promptTokens += s.promptIds.length;
      const asked = promptSampling(request, p);
      const wanted = asked.maxTokens;
      // As run.c, the last sampled token is never fed back, so a sequence
      // can generate up to seq_len - prompt + 1 tokens.
      s.maxTokens = Math.min(wanted, shape.seqLen - s.promptIds.length + 1);
      s.decoder = createDecoder(tokenizer, s.promptIds[s.promptIds.length - 1]);
      if (s.promptIds.length >= shape.seqLen) {
        output.finish(
          s,
          "error",
          `prompt is ${s.promptIds.length} tokens; the model's context is ${shape.seqLen} positions`,
        );
      } else if (wanted <= 0) {
        output.finish(s, "length");
      } else {
        s.sampler = createSampler({
          vocabSize: shape.vocabSize,
          temperature: asked.temperature,
          topP: asked.topP,
          // As run.c, a seed of 0 (unset) becomes the clock: xorshift would stay 0.
          seed: asked.seed || BigInt(Date.now()),
        });
      }
    } catch (err) {
      output.finish(s, "error", `prompt "${p.id}": ${(err as Error).message}`);
    }
  }
}

/**
 * The sampling prompt `p` of `request` asks for: its own overrides, else
 * the request's, else the defaults (max_tokens 256, temperature 0, top_p
 * 0.9); `seed` 0n when neither sets one (the clock is used then).
 */
export function promptSampling(
  request: GenerateRequest,
  p: PromptInput,
): { maxTokens: number; temperature: number; topP: number; seed: bigint } {
  const sampling = request.sampling;
  return {
    maxTokens: p.maxTokens ?? (sampling?.maxTokens || COORDINATOR_DEFAULTS.maxTokens),
    temperature: p.temperature ?? sampling?.temperature ?? 0,
    topP: p.topP ?? (sampling?.topP || COORDINATOR_DEFAULTS.topP),
    seed: p.seed || sampling?.seed || 0n,
  };
}
