/** Shared core of every Tessera role: model formats, tensors, errors, lifecycle. */
export * from "./errors.js";
export * from "./model-shape.js";
export * from "./tensor.js";
export * from "./checkpoint.js";
export * from "./server.js";
export * from "./lifecycle.js";
export * from "./units.js";
