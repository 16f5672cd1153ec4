/**
 * The `tessera.v1.Coordinator` service's methods: Generate (see
 * generate.ts), the node set's AddNode / RemoveNode / ListNodes, the
 * served models' ListModels, and the
 * batch-job RPCs (SubmitJob .. WatchJob, job-service.ts).
 */
import { Code, Coordinator, RpcError, checkHealth, type ServiceImpl } from "@tessera/proto";
import { NODE_ROLES, ROLES, isHostPort, isNodeRole, nodeName, wireKvPlacement } from "@tessera/core";
import type { Membership } from "../membership.js";
import type { CompiledCoordinatorOptions } from "../options.js";
import { requireAdmin, type Authenticator } from "./auth.js";
import type { Generate } from "./generate.js";
import type { JobService } from "./job-service.js";

/** What the Coordinator service's methods need. */
export interface CoordinatorRpcDeps {
  options: CompiledCoordinatorOptions;
  membership: Membership;
  auth: Authenticator;
  generate: Generate;
  jobService: JobService;
  /** The coordinator's lifecycle state: Generate answers UNAVAILABLE unless "running". */
  state(): string;
}

/** The Coordinator service's implementation (callers identified by `deps.auth`). */
export function coordinatorRpcs(deps: CoordinatorRpcDeps): ServiceImpl<typeof Coordinator> {
  const { options, membership, auth } = deps;
  return {
    ...deps.jobService.rpcs,

    async generate(call) {
      const state = deps.state();
      if (state !== "running") throw new RpcError(Code.UNAVAILABLE, `coordinator is ${state}`);
      const cancelled = new AbortController();
      call.on("cancelled", () => cancelled.abort());
      if (call.cancelled) cancelled.abort();
      await deps.generate.run(call.request, {
        who: auth.identify(call.metadata),
        signal: cancelled.signal,
        emit: (event) => {
          if (!call.destroyed) call.write(event);
        },
      });
    },

    async addNode(req, call) {
      requireAdmin(auth.identify(call.metadata), "AddNode");
      const role = req.role;
      if (!isNodeRole(role)) {
        throw new RpcError(
          Code.INVALID_ARGUMENT,
          `role: must be ${NODE_ROLES.slice(0, -1).join(", ")} or ${NODE_ROLES.at(-1)}, got ${JSON.stringify(role)}`,
        );
      }
      if (!isHostPort(req.address)) {
        throw new RpcError(Code.INVALID_ARGUMENT, `address: ${JSON.stringify(req.address)} is not host:port`);
      }
      const health = await checkHealth(req.address, ROLES[role].service, options.connectTimeoutMs);
      if (health !== "SERVING") {
        throw new RpcError(
          Code.UNAVAILABLE,
          `${nodeName(role, req.address)} does not answer its health check (${health})`,
        );
      }
      try {
        membership.add(role, req.address);
      } catch (err) {
        throw new RpcError(Code.INVALID_ARGUMENT, (err as Error).message, { cause: err });
      }
      return {};
    },

    async removeNode(req, call) {
      requireAdmin(auth.identify(call.metadata), "RemoveNode");
      if (!membership.roleOf(req.address)) {
        throw new RpcError(Code.NOT_FOUND, `address: ${JSON.stringify(req.address)} is not a node of this cluster`);
      }
      try {
        membership.remove(req.address);
      } catch (err) {
        throw new RpcError(Code.FAILED_PRECONDITION, (err as Error).message, { cause: err });
      }
      return {};
    },

    async listModels(_req, call) {
      const who = auth.identify(call.metadata);
      return {
        models: options.models.map((m) => ({
          name: m.name,
          modelPath: who.admin ? m.modelPath : "",
          tokenizerPath: who.admin ? m.tokenizerPath : "",
          kv: wireKvPlacement(m.kv),
        })),
      };
    },

    async listNodes() {
      const all = NODE_ROLES.flatMap((role) =>
        membership.all(role).map((address) => ({ role, address, service: ROLES[role].service })),
      );
      const nodes = await Promise.all(
        all.map(async (n) => ({
          role: n.role,
          address: n.address,
          health: await checkHealth(n.address, n.service, 2000),
        })),
      );
      return { nodes };
    },
  };
}
