/**
 * @tessera/nats: Tessera's use of NATS JetStream (issue 5) — the node
 * registry and the job queue.
 */
export * from "./connection.js";
export * from "./registry.js";
export * from "./jobs.js";
export {
  natsServerCredentials,
  redactNatsServers,
  type NatsServerCredentials,
  type NatsUrlAuth,
} from "./server-urls.js";
export * from "./file-store.js";
