/**
 * `tessera model synth|info|export-hf`: model checkpoints.
 */
import { Option, type Command } from "commander";
import { defaultTokenizerFor } from "../paths.js";
import { int, withSignals } from "../flags.js";

const impl = () => import("./model.js");

/** Adds `tessera model` and its subcommands to `program`. */
export function addModelCommands(program: Command): void {
  const model = program.command("model").description("Model checkpoints.");
  model
    .command("synth")
    .description(
      "Write a checkpoint of any Llama shape with weights generated from a seed (for benchmarks), as a llama2.c file " +
        "or a Hugging Face folder (config.json + model.safetensors, q/k rows in HF's rotary layout as export-hf " +
        "writes them; no tokenizer.json: pass --tokenizer to `tessera run`). Streams tensor by tensor: memory holds " +
        "one tensor, whatever the model's size. The same seed gives the same weights in every format.",
    )
    .requiredOption("--out <path>", "file (llama2c) or folder (hf) to write")
    .option("--dim <n>", "model dimension", int("--dim", 1), 1024)
    .option("--hidden <n>", "FFN hidden dimension (default: Llama's 8/3·dim rounded up to 256)", int("--hidden", 1))
    .option("--layers <n>", "transformer layers", int("--layers", 1), 8)
    .option("--heads <n>", "query heads", int("--heads", 1), 16)
    .option("--kv-heads <n>", "KV heads (GQA; default = heads)", int("--kv-heads", 1))
    .option("--vocab <n>", "vocabulary size", int("--vocab", 1), 32000)
    .option("--seq-len <n>", "context length in positions", int("--seq-len", 1), 2048)
    .option("--seed <n>", "weight seed", int("--seed"), 1)
    .addOption(
      new Option("--format <f>", "llama2c (version-1 header), llama2c-legacy, or hf (Hugging Face folder)")
        .choices(["llama2c", "llama2c-legacy", "hf", "v1", "legacy"])
        .default("llama2c"),
    )
    .addOption(
      new Option("--dtype <t>", "weight type of an hf folder (llama2c is always f32)").choices(["f32", "f16", "bf16"]),
    )
    .addOption(
      new Option("--arch <a>", "layout: llama, or qwen2 (q/k/v biases; hf only)")
        .choices(["llama", "qwen2"])
        .default("llama"),
    )
    .option("--qkv-bias", "same as --arch qwen2", false)
    .option(
      "--separate-classifier",
      "draw a separate classifier (lm_head, as Llama 2) instead of sharing the embedding (as llama2.c's models)",
      false,
    )
    .option("--quiet", "no progress bar", false)
    .action((o) => withSignals(async () => (await (await impl()).synthCommand(o), 0)));
  model
    .command("info")
    .description(
      "Print a checkpoint's (llama2.c file or Hugging Face folder) format, shape, parameter count, dtype and bytes.",
    )
    .argument("<path>", "llama2.c checkpoint or Hugging Face folder")
    .option("--json", "machine-readable output", false)
    .action((path: string, o) => withSignals(async () => (await (await impl()).infoCommand(path, o.json), 0)));
  model
    .command("export-hf")
    .description("Write a model as a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json).")
    .requiredOption("--model <path>", "llama2.c checkpoint or Hugging Face folder")
    .option(
      "--tokenizer <path>",
      "tokenizer.bin or tokenizer.json to write as tokenizer.json (default: the model's, as for `tessera run`)",
    )
    .requiredOption("--out <dir>", "folder to write (created if needed)")
    .addOption(new Option("--dtype <t>", "weight type").choices(["f32", "f16", "bf16"]).default("f32"))
    .action((o) =>
      withSignals(async () => {
        const tokenizer = o.tokenizer ?? defaultTokenizerFor(o.model);
        await (await impl()).exportHfCommand({ ...o, tokenizer });
        return 0;
      }),
    );
}
