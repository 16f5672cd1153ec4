/**
 * The kernels this package ships, registered in the order messages list
 * them. Adding a kernel: its file in this folder, then its import and one
 * {@link registerAttentionKernel} line here.
 */
import { jsKernel } from "./js.js";
import { registerAttentionKernel } from "./registry.js";
import { wasmKernel } from "./wasm.js";

registerAttentionKernel(wasmKernel);
registerAttentionKernel(jsKernel);

/** The kernel both attention nodes and the by-name entry points (online.ts) use unless told otherwise. */
export const DEFAULT_ATTENTION_KERNEL = wasmKernel.name;
