/**
 * The resource detectors of a traced Tessera process: the ones the
 * OpenTelemetry Node SDK would pick from OTEL_NODE_RESOURCE_DETECTORS
 * ("service,host,process" by default, "all", "none"), with the process
 * detector's command line redacted ({@link redactArgv}): a `--token` or
 * `--nats-password` given as a flag never reaches a collector.
 * Loaded only when tracing is on (see `startTelemetry`).
 */
import {
  hostDetector,
  osDetector,
  processDetector,
  serviceInstanceIdDetector,
  serviceNameEnvDetector,
  type DetectedResource,
  type ResourceDetector,
} from "@opentelemetry/resources";
import { redactArgv } from "./redact.js";

/** The resource attribute of the whole argv (semantic conventions, `process.command_args`). */
const COMMAND_ARGS = "process.command_args";
/** The resource attribute of the whole command line as one string, when a detector sets it. */
const COMMAND_LINE = "process.command_line";

/**
 * The SDK's process detector (`process.pid`, `process.executable.*`,
 * `process.runtime.*`, `process.owner`, ...) with `process.command_args`
 * redacted and any `process.command_line` dropped.
 */
export const redactedProcessDetector: ResourceDetector = {
  detect(config): DetectedResource {
    const detected = processDetector.detect(config);
    const attributes = { ...detected.attributes };
    const args = attributes[COMMAND_ARGS];
    if (Array.isArray(args)) attributes[COMMAND_ARGS] = redactArgv(args.map(String));
    delete attributes[COMMAND_LINE];
    return { ...detected, attributes };
  },
};

/**
 * The detectors OTEL_NODE_RESOURCE_DETECTORS names (comma-separated
 * "service", "host", "process"; "all"; "none"; unset: "service,host,process",
 * as the SDK's `startNodeSdk`), the process one being
 * {@link redactedProcessDetector}. Names the SDK does not know are skipped,
 * as it skips them.
 */
export function resourceDetectorsOf(env: NodeJS.ProcessEnv = process.env): ResourceDetector[] {
  let names = (env.OTEL_NODE_RESOURCE_DETECTORS ?? "")
    .split(",")
    .map((n) => n.trim())
    .filter((n) => n !== "");
  if (names.length === 0) names = ["service", "host", "process"];
  else if (names.includes("none")) names = [];
  else if (names.includes("all")) names = ["host", "process", "service"];
  return names.flatMap((name): ResourceDetector[] => {
    switch (name) {
      case "process":
        return [redactedProcessDetector];
      case "host":
        return [hostDetector, osDetector];
      case "service":
        return [serviceInstanceIdDetector, serviceNameEnvDetector];
      default:
        return [];
    }
  });
}
