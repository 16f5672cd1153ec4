/**
 * JSON schemas of the HTTP API's request bodies (validated by Fastify's
 * ajv, with unknown properties refused rather than removed), and the body
 * types they describe. Fields are OpenAI's (API reference, "Completions"
 * and "Chat"); {@link UNSUPPORTED} lists those Tessera does not implement.
 */

/** Parameters of OpenAI's that Tessera does not implement, and the value each may take anyway (its no-op). */
export const UNSUPPORTED: Readonly<Record<string, readonly unknown[]>> = Object.freeze({
  logprobs: [false, 0],
  top_logprobs: [0],
  presence_penalty: [0],
  frequency_penalty: [0],
  repetition_penalty: [1],
  logit_bias: [],
  best_of: [1],
  suffix: [""],
  top_k: [-1, 0],
  min_p: [0],
  tools: [],
  tool_choice: ["none"],
  functions: [],
  function_call: ["none"],
  response_format: [],
  parallel_tool_calls: [],
  prompt_logprobs: [0],
});

const nullable = (schema: Record<string, unknown>) => ({ anyOf: [schema, { type: "null" }] });

const anything = Object.fromEntries(Object.keys(UNSUPPORTED).map((k) => [k, {}]));

/** What completions and chat both take: sampling, stop, n, streaming. */
const COMMON = {
  model: { type: "string", minLength: 1 },
  max_tokens: nullable({ type: "integer", minimum: 1 }),
  temperature: nullable({ type: "number", minimum: 0, maximum: 2 }),
  top_p: nullable({ type: "number", exclusiveMinimum: 0, maximum: 1 }),
  seed: nullable({ type: "integer", minimum: 1 }),
  stop: nullable({
    anyOf: [
      { type: "string", minLength: 1 },
      { type: "array", items: { type: "string", minLength: 1 }, maxItems: 4 },
    ],
  }),
  n: nullable({ type: "integer", minimum: 1, maximum: 128 }),
  stream: nullable({ type: "boolean" }),
  stream_options: nullable({
    type: "object",
    properties: { include_usage: { type: "boolean" } },
    additionalProperties: false,
  }),
  user: { type: "string" },
  ...anything,
} as const;

/** POST /v1/completions. */
export const COMPLETION_BODY = {
  type: "object",
  required: ["model", "prompt"],
  additionalProperties: false,
  properties: {
    ...COMMON,
    prompt: {
      anyOf: [{ type: "string" }, { type: "array", items: { type: "string" }, minItems: 1 }],
    },
    echo: nullable({ type: "boolean" }),
  },
} as const;

/** A chat message's content: text, or text parts. */
const CONTENT = {
  anyOf: [
    { type: "string" },
    {
      type: "array",
      items: {
        type: "object",
        required: ["type", "text"],
        properties: { type: { const: "text" }, text: { type: "string" } },
      },
    },
    { type: "null" },
  ],
};

/** POST /v1/chat/completions. */
export const CHAT_BODY = {
  type: "object",
  required: ["model", "messages"],
  additionalProperties: false,
  properties: {
    ...COMMON,
    max_completion_tokens: nullable({ type: "integer", minimum: 1 }),
    messages: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        required: ["role"],
        properties: {
          role: { enum: ["system", "developer", "user", "assistant", "tool"] },
          content: CONTENT,
          name: { type: "string" },
        },
      },
    },
  },
} as const;

/** The body fields completions and chat share (as validated by {@link COMPLETION_BODY} / {@link CHAT_BODY}). */
export interface CommonBody {
  model: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  n?: number | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  [unsupported: string]: unknown;
}

/** A completions body. */
export interface CompletionBody extends CommonBody {
  prompt: string | string[];
  echo?: boolean | null;
}

/** A chat message. */
export interface ChatMessage {
  role: string;
  content?: string | { type: "text"; text: string }[] | null;
  name?: string;
}

/** A chat body. */
export interface ChatBody extends CommonBody {
  messages: ChatMessage[];
  max_completion_tokens?: number | null;
}
