/**
 * @tessera/scheduler: hardware catalogue, roofline cost model, planner and
 * cluster descriptions for throughput-per-dollar placement (issue 4).
 */
export * from "./catalogue.js";
export * from "./cost-model.js";
export * from "./planner.js";
export * from "./cluster.js";
export * from "./profile.js";
