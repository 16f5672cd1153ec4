/**
 * @tessera/profiling: the measurements a node makes about itself at start
 * (its profile): dense MatMul timings, memory read bandwidth, the attention
 * kernel's roofline, disk and append figures, gRPC loopback. The figures
 * and their mapping to the cost model stay pure in @tessera/scheduler.
 */
export { measureReadBandwidth, bestOf, dropFilePages } from "./measure.js";
export { profileDense } from "./dense.js";
export { measureAttentionKernel } from "./attention-kernel.js";
export { measureDiskRead, measureAppendSync } from "./disk.js";
export { measureRpcLoopback } from "./rpc-loopback.js";
