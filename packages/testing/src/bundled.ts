import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Root of the repository this package was built in (packages/testing/dist/../../..). */
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/**
 * The bundled test model (stories260K, llama2.c format), its tokenizer and
 * prompts, in ../shared beside the repository: the same files as the CLI's
 * `bundled` (apps/cli/src/paths.ts), which no package may import.
 */
export const bundled = {
  model: join(repoRoot, "../shared/models/stories260K.bin"),
  tokenizer: join(repoRoot, "../shared/models/tok512.bin"),
  prompts: join(repoRoot, "../shared/prompts/stories.jsonl"),
};
