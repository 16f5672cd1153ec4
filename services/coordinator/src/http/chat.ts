/**
 * `POST /v1/chat/completions`: the messages rendered with the model's own
 * chat template (chat-template.ts), then run as a completion of that text;
 * `n`, `stop`, sampling, `stream` as "chat.completion.chunk" chunks (the
 * first of each choice carries `role: "assistant"`), usage.
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { renderChat } from "./chat-template.js";
import { samplingOf, type Choice, type Usage } from "./generation.js";
import { servedModel } from "./models.js";
import { respond, type RouteContext, type Shapes } from "./respond.js";
import { CHAT_BODY, type ChatBody } from "./schemas.js";

/** The "chat.completion" shapes of one request. */
function chatShapes(model: string): Shapes {
  const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  const head = { id, created, model };
  return {
    chunk: (index, text, finishReason, first) => ({
      ...head,
      object: "chat.completion.chunk",
      choices: [
        {
          index,
          delta: first ? { role: "assistant", content: text } : text ? { content: text } : {},
          logprobs: null,
          finish_reason: finishReason,
        },
      ],
    }),
    usageChunk: (usage: Usage) => ({ ...head, object: "chat.completion.chunk", choices: [], usage }),
    response: (choices: Choice[], usage: Usage) => ({
      ...head,
      object: "chat.completion",
      choices: choices.map((c) => ({
        index: c.index,
        message: { role: "assistant", content: c.text },
        logprobs: null,
        finish_reason: c.finishReason,
      })),
      usage,
    }),
  };
}

/** Registers POST /v1/chat/completions. */
export function chatRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.post<{ Body: ChatBody }>("/v1/chat/completions", { schema: { body: CHAT_BODY } }, async (req, reply) => {
    const body = req.body;
    const served = servedModel(ctx.coordinator, body.model);
    const sampling = samplingOf(body, body.max_completion_tokens ?? body.max_tokens, 0);
    const prompt = await renderChat(served, body.messages, ctx.log);
    return respond(
      ctx,
      req,
      reply,
      {
        served,
        prompts: [prompt],
        sampling,
        stream: body.stream ?? false,
        includeUsage: body.stream_options?.include_usage ?? false,
        param: "messages",
        operation: "chat",
      },
      chatShapes(served.name),
    );
  });
}
