/**
 * The bundled test model, written once for the CLI (`tessera run`'s
 * defaults) and the test harness (@tessera/testing): stories260K in
 * llama2.c format, its tokenizer and prompts, in ../shared beside the
 * repository.
 */
import { existsSync } from "node:fs";
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

/**
 * The tokenizer to use for `model` when none is given: tok512.bin for the
 * bundled stories260K, tokenizer.json inside a Hugging Face folder, else
 * tokenizer.bin beside a llama2.c checkpoint (the bundled tok512.bin when
 * there is none). Reads only whether those files exist.
 */
export function defaultTokenizerFor(model: string): string {
  if (resolve(model) === resolve(bundled.model)) return bundled.tokenizer;
  if (existsSync(join(model, "config.json"))) return join(model, "tokenizer.json");
  const beside = join(dirname(model), "tokenizer.bin");
  return existsSync(beside) ? beside : bundled.tokenizer;
}
