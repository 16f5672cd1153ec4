/**
 * Harness for integration tests and benchmarks: starts real Tessera
 * processes on loopback ports and talks to them over real gRPC. Everything
 * it starts is returned as something to stop; tests register the stop with
 * `t.after` so nothing leaks even when an assertion fails.
 */
import {
  Coordinator,
  createClient,
  type GenerateEvent,
  type MessageInitShape,
  type GenerateRequestSchema,
  type Progress,
  type Result,
  type Summary,
} from "@tessera/proto";

export { bundled } from "@tessera/model";
export * from "./attention-harness.js";

/** What one Generate call streamed. */
export interface GenerateOutcome {
  /** Results by prompt id. */
  results: Map<string, Result>;
  progress: Progress[];
  summary: Summary | undefined;
}

/**
 * Calls Coordinator.Generate at `address` and collects the whole stream.
 * `onEvent` sees each event as it arrives (e.g. to kill a node mid-decode).
 * @throws RpcError when the call fails as a whole.
 */
export async function generate(
  address: string,
  request: MessageInitShape<typeof GenerateRequestSchema>,
  onEvent?: (e: GenerateEvent) => void | Promise<void>,
): Promise<GenerateOutcome> {
  const client = createClient(Coordinator, address);
  const out: GenerateOutcome = { results: new Map(), progress: [], summary: undefined };
  try {
    for await (const ev of client.generate(request) as AsyncIterable<GenerateEvent>) {
      await onEvent?.(ev);
      const e = ev.event;
      if (e.case === "result") out.results.set(e.value.id, e.value);
      else if (e.case === "progress") out.progress.push(e.value);
      else if (e.case === "summary") out.summary = e.value;
    }
  } finally {
    client.close();
  }
  return out;
}

export { overwriteAt, tempDir, tmpfsDir } from "./temp-dir.js";
export { startPrivateNats, type PrivateNats } from "./private-nats.js";
export {
  startInProcessCluster,
  type InProcessCluster,
  type InProcessClusterOptions,
  type StartedNodes,
} from "./in-process-cluster.js";
export * from "./batch-files.js";
export { collect, failure, freePort } from "./rpc.js";
export * from "./fake-kube-api.js";
