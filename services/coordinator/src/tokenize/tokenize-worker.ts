/**
 * The tokeniser pool's worker thread (piscina loads this file; see
 * tokenizer-pool.ts): encodes a task's prompt texts with the model's
 * tokenizer, which it loads once per (path, vocab size) with the same
 * loadModelTokenizer the coordinator uses (llama2.c tokenizer.bin or a
 * Hugging Face tokenizer.json), so the ids are those the event loop would
 * have computed.
 */
import { loadModelTokenizer, type Tokenizer } from "@tessera/model";

/** One task: texts of consecutive prompts of one request, and the tokenizer to encode them with. */
export interface TokenizeTask {
  /** The tokenizer file (as the model cache loaded it). */
  tokenizerPath: string;
  /** The model's vocab_size (loadModelTokenizer checks the file against it). */
  vocabSize: number;
  /** Each prompt's text, encoded with BOS and without EOS. */
  texts: string[];
}

/** Per text: its token ids, or the message of the error its encode threw. */
export type TokenizeOutcome = Int32Array | { error: string };

const tokenizers = new Map<string, Promise<Tokenizer>>();

function tokenizerOf(path: string, vocabSize: number): Promise<Tokenizer> {
  const key = `${vocabSize}\0${path}`;
  let t = tokenizers.get(key);
  if (!t) {
    t = loadModelTokenizer(path, vocabSize);
    tokenizers.set(key, t);
    t.catch(() => tokenizers.delete(key));
  }
  return t;
}

/**
 * Encodes every text of `task` (BOS, no EOS; see Tokenizer.encode).
 * @throws CheckpointError naming the file when the tokenizer cannot be loaded.
 */
export default async function tokenize(task: TokenizeTask): Promise<TokenizeOutcome[]> {
  const tokenizer = await tokenizerOf(task.tokenizerPath, task.vocabSize);
  return task.texts.map((text) => {
    try {
      return Int32Array.from(tokenizer.encode(text, { bos: true, eos: false }));
    } catch (err) {
      return { error: (err as Error).message };
    }
  });
}
