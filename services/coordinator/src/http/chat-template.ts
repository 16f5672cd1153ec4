/**
 * A model's chat template: `chat_template` of the `tokenizer_config.json`
 * in its Hugging Face folder, rendered with @huggingface/jinja (the
 * library transformers.js uses) as transformers' apply_chat_template
 * does, with `add_generation_prompt`. `bos_token` renders as "": Tessera's
 * tokenizer puts BOS before every prompt already. Templates are compiled
 * once per model.
 */
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import type { ServedModel } from "../served-models.js";
import { invalidRequest } from "./errors.js";
import type { ChatMessage } from "./schemas.js";

/** A compiled template and the special tokens it may name. */
interface ChatTemplate {
  template: Template;
  eosToken: string;
}

const cache = new Map<string, Promise<ChatTemplate | undefined>>();

/** The text of a special token as tokenizer_config.json gives it (a string or `{content}`). */
function tokenText(v: unknown): string {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return "";
}

/** Reads and compiles `served`'s template; undefined when it has none (a checkpoint file, no config, no template). */
async function load(served: ServedModel, log: (line: string) => void): Promise<ChatTemplate | undefined> {
  const isDir = (await stat(served.modelPath).catch(() => undefined))?.isDirectory() ?? false;
  if (!isDir) return undefined;
  const file = join(served.modelPath, "tokenizer_config.json");
  const text = await readFile(file, "utf8").catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const config = JSON.parse(text) as Record<string, unknown>;
    let source = config["chat_template"];
    // A list of named templates (transformers' form): the "default" one.
    if (Array.isArray(source)) {
      source = (source as { name?: string; template?: string }[]).find((t) => t.name === "default")?.template;
    }
    if (typeof source !== "string") return undefined;
    return { template: new Template(source), eosToken: tokenText(config["eos_token"]) };
  } catch (err) {
    // The operator's file: why goes to the log, not to the caller.
    log(`model "${served.name}": ${file}: chat template unusable: ${(err as Error).message}`);
    return undefined;
  }
}

/**
 * `messages` rendered with `served`'s chat template, ending with the
 * assistant's turn (add_generation_prompt).
 * @throws OpenAiError 400 (param "messages") when the model has no chat
 *   template, or it fails to render these messages.
 */
export async function renderChat(
  served: ServedModel,
  messages: readonly ChatMessage[],
  log: (line: string) => void,
): Promise<string> {
  let loading = cache.get(served.modelPath);
  if (!loading) cache.set(served.modelPath, (loading = load(served, log)));
  const t = await loading;
  if (!t) {
    throw invalidRequest(
      "messages",
      `model "${served.name}" has no chat template (no chat_template in its folder's tokenizer_config.json): ` +
        "use /v1/completions",
      "no_chat_template",
    );
  }
  const plain = messages.map((m) => ({
    ...m,
    content: typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text).join(""),
  }));
  try {
    return t.template.render({ messages: plain, add_generation_prompt: true, bos_token: "", eos_token: t.eosToken });
  } catch (err) {
    throw invalidRequest("messages", `the chat template of model "${served.name}" failed: ${(err as Error).message}`);
  }
}
