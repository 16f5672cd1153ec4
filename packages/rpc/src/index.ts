/**
 * @tessera/rpc: the lifecycle of a role's gRPC service (the `Service`
 * contract of @tessera/core over a grpc-js server with health, drain and
 * forced shutdown), on top of the @tessera/proto adapter.
 */
export { type GrpcServer, type ServerSecurity, startGrpcServer } from "./server.js";
export {
  type GrpcServiceSpec,
  createGrpcService,
  type RequestLoops,
  createRequestLoops,
  readNodeAdvert,
} from "./grpc-service.js";
export {
  type Callers,
  GPU_NODE_CALLERS,
  ATTENTION_CALLERS,
  COORDINATOR_CALLERS,
  callersOf,
  callerRoleCheck,
  refusal,
} from "./caller-roles.js";
