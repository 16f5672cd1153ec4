import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { bundled } from "@tessera/model";

/**
 * The repository root and the bundled test model, tokenizer and prompts
 * (in ../shared beside the repository): @tessera/model's, written once there.
 */
export { bundled, repoRoot } from "@tessera/model";

/** This CLI's entry point, used to start role processes. */
export const cliEntry = join(dirname(fileURLToPath(import.meta.url)), "main.js");

/**
 * The tokenizer to use for `model` when none is given: tok512.bin for the
 * bundled stories260K, tokenizer.json inside a Hugging Face folder, else
 * tokenizer.bin beside a llama2.c checkpoint.
 */
export function defaultTokenizerFor(model: string): string {
  if (resolve(model) === resolve(bundled.model)) return bundled.tokenizer;
  if (existsSync(join(model, "config.json"))) return join(model, "tokenizer.json");
  const beside = join(dirname(model), "tokenizer.bin");
  return existsSync(beside) ? beside : bundled.tokenizer;
}
