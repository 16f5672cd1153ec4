import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The repository root and the bundled test model, tokenizer and prompts
 * (in ../shared beside the repository): @tessera/model's, written once there.
 */
export { bundled, defaultTokenizerFor, repoRoot } from "@tessera/model";

/** This CLI's entry point, used to start role processes. */
export const cliEntry = join(dirname(fileURLToPath(import.meta.url)), "main.js");
