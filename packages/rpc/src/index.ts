/**
 * @tessera/rpc: the lifecycle of a role's gRPC service (the `Service`
 * contract of @tessera/core over a grpc-js server with health, drain and
 * forced shutdown, and on mutual TLS each call's check of its caller's
 * certificate role), on top of the @tessera/proto adapter.
 */
export { type GrpcServer, type ServerSecurity, startGrpcServer } from "./server.js";
export {
  type GrpcServiceSpec,
  createGrpcService,
  type RequestLoops,
  createRequestLoops,
  readNodeAdvert,
} from "./grpc-service.js";
export { type Callers, callersOf } from "./caller-roles.js";
