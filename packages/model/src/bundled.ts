/**
 * The bundled test model, written once for the CLI (`tessera run`'s
 * defaults) and the test harness (@tessera/testing): stories260K in
 * llama2.c format, its tokenizer and prompts, in ../shared beside the
 * repository.
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Root of the repository this package sits in (packages/model/{src,dist}/../../..). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** Paths of the bundled model (stories260K.bin), its tokenizer (tok512.bin) and prompts (stories.jsonl). */
export const bundled = Object.freeze({
  model: join(repoRoot, "../shared/models/stories260K.bin"),
  tokenizer: join(repoRoot, "../shared/models/tok512.bin"),
  prompts: join(repoRoot, "../shared/prompts/stories.jsonl"),
});
