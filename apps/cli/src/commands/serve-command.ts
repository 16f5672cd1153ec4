/**
 * `tessera serve`, as `vllm serve` is for vLLM: the embedded local cluster
 * of `tessera run` (same model, tokenizer and node flags) kept up with the
 * OpenAI-compatible HTTP API on --http-port until SIGTERM/SIGINT.
 */
import { Option, type Command } from "commander";
import { addEmbeddedClusterFlags } from "../embedded-cluster.js";
import { bundled } from "../paths.js";
import { int, withSignals } from "../flags.js";

/** Default port of the HTTP API, as vLLM's. */
export const SERVE_HTTP_PORT = 8000;

/** Adds `tessera serve` to `program`. */
export function addServeCommand(program: Command): void {
  const c = program
    .command("serve")
    .description(
      "Start an embedded local cluster (as tessera run does) and serve the OpenAI-compatible HTTP API " +
        "(/v1/models, /v1/completions, /v1/chat/completions, /health) on loopback until SIGTERM/SIGINT.",
    )
    .option("--model <path>", `llama2.c checkpoint or Hugging Face folder to serve (default: ${bundled.model})`)
    .option(
      "--tokenizer <path>",
      "tokenizer.bin or tokenizer.json (default: tok512.bin for the bundled model, tokenizer.json in a Hugging Face folder, else tokenizer.bin beside --model)",
    )
    .addOption(
      new Option("--http-port <port>", "port of the HTTP API")
        .argParser(int("--http-port", 1))
        .default(SERVE_HTTP_PORT)
        .env("TESSERA_HTTP_PORT"),
    )
    .option(
      "--tokens <file>",
      "bearer tokens (as tessera coordinator --tokens): each request needs `Authorization: Bearer <token>`",
    )
    .option("-q, --quiet", "print only the URL", false);
  addEmbeddedClusterFlags(c).action((opts) =>
    withSignals(async (signal) => (await import("./serve.js")).serveCommand(opts, signal)),
  );
}
