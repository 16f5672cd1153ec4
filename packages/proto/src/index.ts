/**
 * Tessera's wire contract: the generated tessera.v1 messages and services,
 * the generated ONNX subset used to build gpu-node graphs, and the adapter
 * that serves and calls them with grpc-js.
 */
export * from "./gen/tessera/v1/tensor_pb.js";
export * from "./gen/tessera/v1/profile_pb.js";
export * from "./gen/tessera/v1/attention_pb.js";
export * from "./gen/tessera/v1/gpu_node_pb.js";
export * from "./gen/tessera/v1/coordinator_pb.js";
export * as onnx from "./gen/onnx/onnx_subset_pb.js";
export { create, toBinary, fromBinary, toJson, fromJson, toJsonString, fromJsonString } from "@bufbuild/protobuf";
export type { MessageInitShape } from "@bufbuild/protobuf";
export {
  addService,
  createClient,
  requests,
  serviceDefinition,
  defaultChannelOptions,
  messageContext,
  type CallOptions,
  type Client,
  type ClientAuth,
  type MethodImpl,
  type ServiceImpl,
} from "./grpc-adapter.js";
export { RpcError, Code } from "./rpc-error.js";
export {
  PLAINTEXT,
  TransportSecurityError,
  channelCredentials,
  hostOf,
  isLoopbackHost,
  loadTls,
  selfChannelOptions,
  serverCredentials,
  setTransportSecurity,
  transportSecurity,
  type TlsFiles,
  type TransportSecurity,
} from "./transport.js";
export { addHealth, setHealth, checkHealth, type ServingStatus } from "./health.js";
export {
  Server,
  ServerCredentials,
  Metadata,
  ServerInterceptingCall,
  ServerListenerBuilder,
  ResponderBuilder,
  type ServerInterceptor,
  type ServerInterceptingCallInterface,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ClientDuplexStream,
} from "@grpc/grpc-js";
export { endSpanWhen, failSpan } from "./span-outcome.js";
