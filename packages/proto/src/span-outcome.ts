/**
 * How every Tessera span ends: with the outcome of the work it covers.
 * One place, so that no span is left open on a failure path and every
 * failed span carries the error the same way.
 */
import { SpanStatusCode, type Span } from "@opentelemetry/api";

/** Marks `span` failed: the exception recorded, status ERROR with its message. The caller ends it. */
export function failSpan(span: Span | undefined, err: unknown): void {
  if (!span) return;
  span.recordException(err instanceof Error ? err : String(err));
  span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
}

/**
 * Ends `span` when `work` settles: on success after `onValue` has added
 * what the result tells (attributes, an in-band error status); on failure
 * marked by {@link failSpan}, and the error is rethrown.
 * @returns `work`'s value.
 */
export function endSpanWhen<T>(span: Span, work: Promise<T>, onValue?: (value: T) => void): Promise<T> {
  return work.then(
    (value) => {
      onValue?.(value);
      span.end();
      return value;
    },
    (err: unknown) => {
      failSpan(span, err);
      span.end();
      throw err;
    },
  );
}
