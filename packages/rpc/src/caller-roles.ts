/**
 * Which certificate roles may call which RPC (issue 13: "any CA-signed
 * certificate may drive any node"). On mutual TLS every call is checked
 * against the role its caller's verified certificate carries as a SAN URI
 * (`spiffe://tessera/role/<role>`, {@link ROLE_URI_PREFIX}); a caller
 * without a role allowed for the RPC gets PERMISSION_DENIED naming the RPC
 * and the role(s) it has. Plaintext (loopback only) carries no
 * certificate and so no role: nothing is checked there. A coordinator
 * with `--tokens` asks for no client certificate: its bearer tokens are
 * the credential, and nothing is checked here either.
 */
import {
  Attention,
  Code,
  Coordinator,
  GpuNode,
  ResponderBuilder,
  ServerInterceptingCall,
  ServerListenerBuilder,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
} from "@tessera/proto";
import { CERT_ROLES, ROLE_URI_PREFIX, rolesOfSubjectAltName, type CertRole } from "@tessera/core";

/** The roles that may call one RPC. */
export type Callers = readonly CertRole[];
/** Every role, the operator's client certificate included. */
const ANY: Callers = CERT_ROLES;
/** The parts of a generated service descriptor read here. */
interface ServiceDesc {
  readonly typeName: string;
  readonly method: object;
  readonly methods: readonly { readonly name: string; readonly localName: string }[];
}
/** One entry per method of a service (by its generated local name), so a new RPC cannot be left out. */
type CallersOf<S extends ServiceDesc> = { readonly [K in keyof S["method"]]: Callers };

/**
 * GpuNode: only the coordinator loads a model and gives up its lease (Load, Release), the
 * coordinator and upstream pipeline stages (other gpu-nodes) send Forward;
 * Info is open to every role (the coordinator's planner, the node's own
 * registry advert, an operator).
 */
export const GPU_NODE_CALLERS: CallersOf<typeof GpuNode> = {
  load: ["coordinator"],
  release: ["coordinator"],
  forward: ["coordinator", "gpu-node"],
  info: ANY,
};

/**
 * Attention (memory- and storage-nodes): the coordinator opens and closes
 * sequences, gpu-nodes send Attend; Info is open to every role.
 */
export const ATTENTION_CALLERS: CallersOf<typeof Attention> = {
  openSequence: ["coordinator"],
  closeSequence: ["coordinator"],
  attend: ["gpu-node"],
  info: ANY,
};

/**
 * Coordinator without `--tokens` (mutual TLS): an operator, and the
 * coordinator itself (its job worker calls its own Generate). Nodes never
 * call it. With `--tokens` the token decides instead (docs/operations.md).
 */
export const COORDINATOR_CALLERS: CallersOf<typeof Coordinator> = {
  generate: ["operator", "coordinator"],
  listNodes: ["operator", "coordinator"],
  listModels: ["operator", "coordinator"],
  addNode: ["operator", "coordinator"],
  removeNode: ["operator", "coordinator"],
  submitJob: ["operator", "coordinator"],
  listJobs: ["operator", "coordinator"],
  getJob: ["operator", "coordinator"],
  getResults: ["operator", "coordinator"],
  cancelJob: ["operator", "coordinator"],
  watchJob: ["operator", "coordinator"],
  deleteJob: ["operator", "coordinator"],
};

/** grpc.health.v1.Health (Check, Watch): every role (readiness probes run with the pod's own certificate). */
const HEALTH_SERVICE = "grpc.health.v1.Health";

function byPath<S extends ServiceDesc>(service: S, table: CallersOf<S>): [string, Callers][] {
  const callers = table as Record<string, Callers>;
  return service.methods.map((m) => [`/${service.typeName}/${m.name}`, callers[m.localName]!]);
}

const CALLERS = new Map<string, Callers>([
  ...byPath(GpuNode, GPU_NODE_CALLERS),
  ...byPath(Attention, ATTENTION_CALLERS),
  ...byPath(Coordinator, COORDINATOR_CALLERS),
]);

/**
 * The roles that may call the gRPC method at `path` ("/tessera.v1.GpuNode/Load");
 * undefined for a method no table names (refused).
 */
export function callersOf(path: string): Callers | undefined {
  if (path.startsWith(`/${HEALTH_SERVICE}/`)) return ANY;
  return CALLERS.get(path);
}

/**
 * Why the call to `path` on a connection with `auth` is refused, or
 * undefined when its caller's certificate has a role `callersOf(path)`
 * allows. The message names the RPC, the caller's certificate (its
 * subject CN: the caller's own) and the roles it has and needs.
 */
export function refusal(
  path: string,
  auth: ReturnType<ServerInterceptingCallInterface["getAuthContext"]>,
): string | undefined {
  const rpc = path.replace(/^\//, "");
  const allowed = callersOf(path);
  if (!allowed) return `${rpc}: no table of caller roles names this RPC`;
  const cert = auth.sslPeerCertificate;
  if (!cert) return `${rpc}: the caller presented no verified certificate`;
  const cn = cert.subject?.CN;
  const who = `the caller's certificate${typeof cn === "string" ? ` (CN=${cn})` : ""}`;
  const roles = rolesOfSubjectAltName(cert.subjectaltname);
  const may = `${rpc} may be called by ${allowed.join(", ")}`;
  if (roles.length === 0) {
    return (
      `${rpc}: ${who} carries no Tessera role (a SAN URI ${ROLE_URI_PREFIX}<role>; ` +
      `\`tessera certs\` makes role certificates); ${may}`
    );
  }
  if (roles.some((r) => allowed.includes(r))) return undefined;
  return `${rpc}: ${who} has role ${roles.join(", ")}; ${may}`;
}

/**
 * A grpc-js server interceptor that refuses, with PERMISSION_DENIED and
 * {@link refusal}'s message, every call whose caller's role the tables
 * above do not allow, before its handler runs (a streaming call is
 * checked once, when it opens). Install it only on a server that asks
 * for client certificates (mutual TLS).
 */
export function callerRoleCheck(): ServerInterceptor {
  return (method, call) => {
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const why = refusal(method.path, call.getAuthContext());
        if (why === undefined) next(metadata);
        else call.sendStatus({ code: Code.PERMISSION_DENIED, details: why });
      })
      .build();
    return new ServerInterceptingCall(call, new ResponderBuilder().withStart((next) => next(listener)).build());
  };
}
