/**
 * One span per prompt of a batch in the OpenTelemetry GenAI semantic
 * conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/):
 * named `{gen_ai.operation.name} {gen_ai.request.model}` (e.g.
 * "text_completion stories260K"), kind CLIENT, a child of the
 * "tessera.batch" span. The engine's steps run many prompts at once, so
 * the step spans are siblings of these under the batch span, not children.
 */
import { trace, SpanKind, SpanStatusCode, type Span } from "@opentelemetry/api";
import type { GenerateRequest, Result } from "@tessera/proto";
import { promptSampling } from "./prompts.js";

const tracer = trace.getTracer("@tessera/coordinator");

/** gen_ai.operation.name of a Generate's prompts: "chat" for chat completions, else "text_completion". */
export type GenAiOperation = "text_completion" | "chat";

/** The open request spans of one batch, by prompt id. */
export class RequestSpans {
  private readonly open = new Map<string, Span>();

  /**
   * Starts a span per prompt of `request` (as children of the active
   * context's span: the batch's), model `model` (the served model's name).
   */
  constructor(request: GenerateRequest, model: string, operation: GenAiOperation) {
    for (const p of request.prompts) {
      const asked = promptSampling(request, p);
      const attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "tessera",
        "gen_ai.system": "tessera",
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": asked.maxTokens,
        "gen_ai.request.temperature": asked.temperature,
        "gen_ai.request.top_p": asked.topP,
        ...(asked.seed ? { "gen_ai.request.seed": Number(asked.seed) } : {}),
        "tessera.prompt_id": p.id,
      };
      this.open.set(p.id, tracer.startSpan(`${operation} ${model}`, { kind: SpanKind.CLIENT, attributes }));
    }
  }

  /** Ends the span of `r`'s prompt with its usage and finish reason (an "error" Result: status ERROR). */
  result(r: Result, model: string): void {
    const span = this.open.get(r.id);
    if (!span) return;
    this.open.delete(r.id);
    span.setAttributes({
      "gen_ai.response.model": model,
      "gen_ai.usage.input_tokens": r.promptTokenIds.length,
      "gen_ai.usage.output_tokens": r.completionTokenIds.length,
      "gen_ai.response.finish_reasons": [r.finishReason],
    });
    if (r.finishReason === "error") {
      span.setAttribute("error.type", "tessera.prompt_failed");
      span.setStatus({ code: SpanStatusCode.ERROR, message: r.error });
    }
    span.end();
  }

  /** Ends the spans of prompts that got no Result (the batch failed or was cancelled) with `err`. */
  endAll(err: unknown): void {
    for (const span of this.open.values()) {
      span.setAttribute("error.type", err instanceof Error ? err.name : "unfinished");
      span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : "no result" });
      span.end();
    }
    this.open.clear();
  }
}
