/**
 * Tracing of the job queue: the submitter's trace context travels in the job
 * message's headers (W3C traceparent), and a worker that pulls the message
 * runs the job under a "tessera.job.queue" span spanning the wait in the queue.
 */
import { headers, type MsgHdrs } from "@nats-io/transport-node";
import { context, propagation, ROOT_CONTEXT, SpanKind, trace, type Context } from "@opentelemetry/api";
import type { JsMsg } from "@nats-io/jetstream";
import type { JobPriority } from "./job-state.js";

/** The tracer of @tessera/nats's job spans. */
export const jobTracer = trace.getTracer("@tessera/nats");

/** The active trace context as NATS headers (`traceparent`, ...); none when no span is active. */
export function traceHeaders(): { headers?: MsgHdrs } {
  const ctx = context.active();
  if (!trace.getSpan(ctx)) return {};
  const h = headers();
  propagation.inject(ctx, h, { set: (carrier, key, value) => carrier.set(key, value) });
  return { headers: h };
}

/**
 * The context a job message carried, with a "tessera.job.queue" span from
 * its publish time to now under it (the time the job waited in the queue).
 */
export function deliveryContext(m: JsMsg, jobId: string, priority: JobPriority): Context {
  const h = m.headers;
  if (!h || !h.has("traceparent")) return ROOT_CONTEXT;
  const parent = propagation.extract(ROOT_CONTEXT, h, {
    keys: (c) => c.keys(),
    get: (c, key) => (c.has(key) ? c.get(key) : undefined),
  });
  if (!trace.getSpan(parent)) return parent;
  const published = Math.floor(Number(m.info.timestampNanos) / 1e6);
  const span = jobTracer.startSpan(
    "tessera.job.queue",
    {
      kind: SpanKind.CONSUMER,
      startTime: published,
      attributes: {
        "messaging.system": "nats",
        "messaging.destination.name": m.subject,
        "tessera.job_id": jobId,
        "tessera.job.priority": priority,
        "tessera.job.delivery_count": m.info.deliveryCount,
        "tessera.job.queue_ms": Math.max(0, Date.now() - published),
      },
    },
    parent,
  );
  span.end();
  return trace.setSpan(parent, span);
}
