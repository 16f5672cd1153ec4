/**
 * The "tessera.attention.attend" span a memory- or storage-node records
 * for an Attend request that carried a sampled trace context (the
 * gpu-node's layer span; see messageContext in @tessera/proto): one span
 * per layer call, with the attributes that say why attention was slow.
 */
import type { AttentionRole } from "@tessera/core";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import {
  endSpanWhen,
  messageContext,
  type AttendRequest,
  type AttendResponseSchema,
  type MessageInitShape,
} from "@tessera/proto";

type AttendResponse = MessageInitShape<typeof AttendResponseSchema>;
const tracer = trace.getTracer("@tessera/attention");

/**
 * Runs `attend(req)`, inside a SERVER span when `req` carries a trace
 * context; without one, `attend` runs alone (nothing recorded).
 * @param role "memory" or "storage" (the `tessera.node.role` attribute).
 * @param kvBytesRead bytes of K and V this call reads from its store for
 *   `req` (RAM for a memory-node, disk for a storage-node); called only
 *   when the call is traced.
 */
export function traceAttend(
  role: AttentionRole,
  req: AttendRequest,
  kvBytesRead: () => number,
  attend: (req: AttendRequest) => Promise<AttendResponse>,
): Promise<AttendResponse> {
  const parent = messageContext(req);
  // Untraced calls run under no context, and compute no attributes.
  if (!parent) return context.with(ROOT_CONTEXT, () => attend(req));
  const bytes = (t: { data: Uint8Array } | undefined) => t?.data.byteLength ?? 0;
  const attributes = {
    "tessera.node.role": role,
    "tessera.step_id": Number(req.stepId),
    "tessera.layer": req.layer,
    "tessera.batch.size": req.items.length,
    "tessera.batch.tokens": req.items.reduce((t, it) => t + it.nTokens, 0),
    "tessera.positions.max": Math.max(0, ...req.items.map((it) => it.startPos + it.nTokens)),
    "tessera.kv.bytes_read": kvBytesRead(),
    "tessera.wire.bytes_received": bytes(req.q) + bytes(req.k) + bytes(req.v),
  };
  return tracer.startActiveSpan("tessera.attention.attend", { kind: SpanKind.SERVER, attributes }, parent, (span) =>
    endSpanWhen(span, attend(req), (res) => {
      const o = res.o as { data?: Uint8Array } | undefined;
      span.setAttributes({
        "tessera.wire.bytes_sent": o?.data?.byteLength ?? 0,
        "tessera.attention.compute_seconds": res.computeSeconds ?? 0,
      });
      if (res.error) span.setStatus({ code: SpanStatusCode.ERROR, message: res.error.message });
    }),
  );
}

/** K/V bytes per position of an Attend request's k: n_kv_heads × head_dim × 2 (K and V) × 4 (f32 cache). */
export function attendKvBytesPerPosition(req: AttendRequest): number {
  return (req.k?.shape[1] ?? 0) * (req.k?.shape[2] ?? 0) * 2 * 4;
}
