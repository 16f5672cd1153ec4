/** Shared core of every Tessera role: model formats, tensors, errors. */
export * from "./errors.js";
export * from "./model-shape.js";
export * from "./tensor.js";
export * from "./checkpoint.js";
