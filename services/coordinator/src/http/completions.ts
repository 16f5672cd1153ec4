/**
 * `POST /v1/completions` as OpenAI's API reference defines it: a prompt or
 * an array of prompts, `n` choices each (choice `i * n + j`), `echo`,
 * `stop`, sampling, `stream` as "text_completion" chunks, usage.
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { samplingOf, type Choice, type Usage } from "./generation.js";
import { servedModel } from "./models.js";
import { respond, type RouteContext, type Shapes } from "./respond.js";
import { COMPLETION_BODY, type CompletionBody } from "./schemas.js";

/** OpenAI's completions default of max_tokens. */
const COMPLETIONS_MAX_TOKENS = 16;

/** The "text_completion" shapes of one request. */
function completionShapes(model: string): Shapes {
  const id = `cmpl-${randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, object: "text_completion", created, model };
  return {
    chunk: (index, text, finishReason) => ({
      ...head,
      choices: [{ index, text, logprobs: null, finish_reason: finishReason }],
    }),
    usageChunk: (usage: Usage) => ({ ...head, choices: [], usage }),
    response: (choices: Choice[], usage: Usage) => ({
      ...head,
      choices: choices.map((c) => ({ index: c.index, text: c.text, logprobs: null, finish_reason: c.finishReason })),
      usage,
    }),
  };
}

/** Registers POST /v1/completions. */
export function completionRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.post<{ Body: CompletionBody }>("/v1/completions", { schema: { body: COMPLETION_BODY } }, (req, reply) => {
    const body = req.body;
    const served = servedModel(ctx.coordinator, body.model);
    const prompts = [body.prompt].flat();
    return respond(
      ctx,
      req,
      reply,
      {
        served,
        prompts,
        sampling: samplingOf(body, body.max_tokens, COMPLETIONS_MAX_TOKENS),
        stream: body.stream ?? false,
        includeUsage: body.stream_options?.include_usage ?? false,
        param: "prompt",
        operation: "text_completion",
        echo: body.echo ? prompts : undefined,
      },
      completionShapes(served.name),
    );
  });
}
