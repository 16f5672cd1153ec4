/**
 * The attention-node shell: the body of the `tessera.v1.Attention` service
 * that the memory-node (KV cache in RAM) and the storage-node (KV cache on
 * disk) share: OpenSequence, CloseSequence, the Attend streams (answered in
 * order, each request in its own span when traced, its errors in the
 * response with a {@link NodeErrorReason}), Info (capacity, used bytes,
 * price, read bandwidth, profile), the KV gauges (tessera_kv_*_bytes), the
 * profile measured at start, and the service lifecycle (drain ends the
 * Attend streams after the request in flight). A node is one
 * {@link AttentionKvStore} plus its options: {@link createAttentionNode}.
 */
import { nodeName, ROLES, type AttentionRole, type Service } from "@tessera/core";
import { createGrpcService, createRequestLoops } from "@tessera/rpc";
import {
  Attention,
  addService,
  type AttendRequest,
  type MessageInitShape,
  type NodeProfile,
  type ServiceImpl,
  type TensorSchema,
} from "@tessera/proto";
import { watchKvBytes } from "@tessera/telemetry";
import { answerAttend } from "./attend-request.js";
import { traceAttend } from "./attention-trace.js";
import type { KvLayoutDims } from "./dims.js";

/** gRPC service name the health service reports on (both attention roles serve it). */
export const ATTENTION_SERVICE_NAME = ROLES.memory.service;

/** What OpenSequence answers: the positions every layer holds and the bytes reserved. */
export interface OpenedSequence {
  readonly length: number;
  readonly reservedBytes: bigint;
}

/** How a store names the node it belongs to in its messages. */
export interface AttentionNodeContext {
  /** The bound host:port once started, the configured one before. */
  address(): string;
  /** "memory-node 127.0.0.1:7302" ({@link nodeName}). */
  where(): string;
}

/**
 * The KV cache of an attention node: what differs between the memory-node
 * and the storage-node. Errors it throws keep their gRPC codes (OpenSequence,
 * CloseSequence) or become the Attend response's `error`, with the reason
 * `attendErrorReason` gives.
 */
export interface AttentionKvStore {
  /**
   * Reserves a sequence of `layout` and `maxPositions` (or finds it, when it
   * is held with the same layout: idempotent).
   * @throws AttentionRequestError INVALID_ARGUMENT for a bad or different
   *   layout; CapacityError when it does not fit; the store's own errors.
   */
  openSequence(seqId: string, layout: KvLayoutDims | undefined, maxPositions: number): Promise<OpenedSequence>;
  /** Frees a sequence (once its running requests are done); unknown ids succeed. */
  closeSequence(seqId: string): Promise<void>;
  /**
   * Validates `req`, appends its K/V rows and attends: o [total_tokens,
   * n_heads * head_dim] f32 as a wire tensor. A synchronous store may return
   * a view of a buffer it reuses (answerAttend encodes an f16 answer before
   * the next request).
   */
  attend(req: AttendRequest): MessageInitShape<typeof TensorSchema> | Promise<MessageInitShape<typeof TensorSchema>>;
  /** Bytes of K and V `req` reads from the store (the span's tessera.kv.bytes_read). */
  kvBytesRead(req: AttendRequest): number;
  /** Bytes of KV cache reserved by the sequences held. */
  usedBytes(): number;
  /** Sequences held. */
  sequenceCount(): number;
  /** Read bandwidth Info advertises, bytes/s; 0 = unknown. */
  readBytesPerSecond(): number;
  /** In start(), before the port is bound, after the profile: e.g. finds the sequences on disk. */
  start(measured: NodeProfile | undefined): Promise<void>;
  /** In close(), once the server is down: lets running requests finish, then releases everything. */
  close(): Promise<void>;
}

/** What {@link createAttentionNode} needs: the role's compiled options and its store. */
export interface AttentionNodeSpec<R extends AttentionRole> {
  readonly role: R;
  readonly host: string;
  readonly port: number;
  /** How long drain() lets the Attend streams finish, ms. */
  readonly shutdownGraceMs: number;
  /** KV bytes this node may hold (Info and the gauges). */
  readonly capacityBytes: number;
  /** $/h Info advertises; 0 = unknown. */
  readonly pricePerHour: number;
  /** The profile Info advertises from the start (a given one, as the role adjusted it); undefined = none yet. */
  readonly profile: NodeProfile | undefined;
  /** Measures the profile in start(), before the port is bound; undefined = not measured. */
  readonly measureProfile: (() => Promise<NodeProfile>) | undefined;
  /** Makes the node's store, once the node can name itself. */
  createStore(node: AttentionNodeContext): AttentionKvStore;
}

/**
 * Creates an attention node of `spec.role` around `spec.createStore`'s
 * store; nothing is bound until `start()` (see createGrpcService for the
 * lifecycle).
 *
 * - OpenSequence/CloseSequence call the store; its errors keep their codes.
 * - Attend: one response per request, in order; a bad request gets an
 *   `error` response (code, message, role, address and reason) and the
 *   stream goes on. A drain lets the request in flight finish, then ends
 *   the stream with OK; requests it had not read yet are not answered.
 * - Info: capacity, reserved bytes, sequences, price ($/h), read bandwidth
 *   (bytes/s) and the profile (unset when none).
 * - start(): the KV gauges start reading the node, the profile is measured
 *   (when asked), then the store starts, all before the port is bound.
 */
export function createAttentionNode<R extends AttentionRole>(
  spec: AttentionNodeSpec<R>,
): Service & { readonly role: R } {
  const { role } = spec;
  const attendLoops = createRequestLoops();
  let profile = spec.profile;
  const address = () => service.address;
  const store = spec.createStore({ address, where: () => nodeName(role, address()) });

  const attend = (req: AttendRequest) => answerAttend(req, { role, address: address() }, () => store.attend(req));
  /** attend() in a span when the request carries a trace context. */
  const tracedAttend = (req: AttendRequest) => traceAttend(role, req, () => store.kvBytesRead(req), attend);

  const impl: ServiceImpl<typeof Attention> = {
    openSequence: (req) => store.openSequence(req.seqId, req.layout, req.maxPositions),
    async closeSequence(req) {
      await store.closeSequence(req.seqId);
      return {};
    },
    attend: (call) => attendLoops.serve(call, tracedAttend),
    async info() {
      return {
        profile,
        role,
        capacityBytes: BigInt(spec.capacityBytes),
        usedBytes: BigInt(store.usedBytes()),
        sequences: store.sequenceCount(),
        pricePerHour: spec.pricePerHour,
        readBytesPerSecond: store.readBytesPerSecond(),
      };
    },
  };

  // The KV gauges (tessera_kv_*_bytes) read this node from start to close.
  let unwatchKv = () => {};
  const service = createGrpcService({
    role,
    name: ROLES[role].label,
    host: spec.host,
    port: spec.port,
    serviceNames: [ATTENTION_SERVICE_NAME],
    register: (s) => addService(s, Attention, impl),
    shutdownGraceMs: spec.shutdownGraceMs,
    async onStart() {
      unwatchKv = watchKvBytes(() => ({
        address: address(),
        usedBytes: store.usedBytes(),
        capacityBytes: spec.capacityBytes,
      }));
      // Before the port is bound, so no request competes with the measurement.
      const measured = spec.measureProfile ? await spec.measureProfile() : undefined;
      if (measured) profile = measured;
      await store.start(measured);
    },
    // Attend streams never end by themselves: end them (with OK, after the
    // request in flight) so that shutdown does not wait out the grace period
    // and then cancel them.
    onDrain: () => attendLoops.stop(spec.shutdownGraceMs),
    beforeShutdown: () => attendLoops.stop(),
    async onClose() {
      unwatchKv();
      await store.close();
    },
  });
  return service;
}
