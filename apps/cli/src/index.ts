/** Programmatic surface of the CLI package: the embedded local cluster and the bundled paths. */
export {
  startLocalCluster,
  type LocalCluster,
  type LocalClusterOptions,
  type Role,
  type RoleProcess,
} from "./local-cluster.js";
export { bundled, repoRoot, cliEntry } from "./paths.js";
export { resultLine, type ResultLine } from "./results-writer.js";
