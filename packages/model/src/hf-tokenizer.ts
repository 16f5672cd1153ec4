/**
 * Hugging Face `tokenizer.json` behind Tessera's {@link Tokenizer}
 * interface, using `@huggingface/tokenizers` (the pure-JS tokenizers of
 * transformers.js), and the conversion of a llama2.c `tokenizer.bin` into
 * an equivalent `tokenizer.json`.
 *
 * The conversion mirrors what `transformers`' `LlamaConverter`
 * (convert_slow_tokenizer.py, legacy mode) writes for a sentencepiece BPE
 * model with byte fallback: model BPE (`byte_fallback`, `fuse_unk`, vocab
 * piece → id, merges from `SentencePieceExtractor`: every split of a piece
 * into two pieces, ordered by the merged piece's score, best first),
 * normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, decoder
 * Replace("▁", " ") + ByteFallback + Fuse + Strip(" ", 1, 0). With merges
 * ranked by score, BPE's "merge the lowest-ranked adjacent pair" picks the
 * same pair as llama2.c's "merge the pair whose concatenation scores best"
 * (see hf-model.test.ts for the check on the sample prompts). Known
 * differences from run.c: text containing the literal special-token strings
 * `<s>`, `</s>`, `<unk>` encodes as those tokens; when two different pieces
 * share a score (or one piece has several splits present at once) ties break
 * by rank instead of leftmost; decoding does not drop control bytes as
 * run.c's safe_printf does.
 */
import { readFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { CheckpointError } from "@tessera/core";
import { MODEL_LIMITS } from "./model-limits.js";
import { loadTokenizer, type EncodeOptions, type StreamingDecoder, type Tokenizer } from "./tokenizer.js";

/** A converted tokenizer: the contents of `tokenizer.json` and `tokenizer_config.json`. */
export interface HfTokenizerFiles {
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
}

const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;

/**
 * Converts a llama2.c tokenizer (pieces with " " for sentencepiece's "▁",
 * ids 0/1/2 = unk/BOS/EOS) to the `tokenizer.json` LlamaTokenizerFast
 * would have for the same sentencepiece model (see the module comment).
 * @throws RangeError when two pieces convert to the same string.
 */
export function llama2cToHfTokenizer(tok: Tokenizer): HfTokenizerFiles {
  const specials = new Map<number, string>([
    [0, "<unk>"],
    [tok.bos, "<s>"],
    [tok.eos, "</s>"],
  ]);
  const vocab: Record<string, number> = {};
  const pieceOf: string[] = [];
  const normal: boolean[] = [];
  for (let id = 0; id < tok.vocabSize; id++) {
    const raw = tok.piece(id);
    const special = specials.get(id);
    const piece =
      special ?? (BYTE_PIECE.test(raw) ? raw : Buffer.from(raw, "latin1").toString("utf8").replaceAll(" ", "▁"));
    if (Object.hasOwn(vocab, piece)) throw new RangeError(`tokens ${vocab[piece]} and ${id} both convert to ${piece}`);
    vocab[piece] = id;
    pieceOf.push(piece);
    normal.push(special === undefined && !BYTE_PIECE.test(raw));
  }
  // SentencePieceExtractor.extract: every split of a piece into two normal pieces.
  const merges: { l: string; r: string; score: number; id: number; lid: number; rid: number }[] = [];
  for (let id = 0; id < tok.vocabSize; id++) {
    if (!normal[id]) continue;
    const chars = Array.from(pieceOf[id]!);
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join("");
      const r = chars.slice(k).join("");
      const lid = vocab[l];
      const rid = vocab[r];
      if (lid !== undefined && rid !== undefined && normal[lid] && normal[rid]) {
        merges.push({ l, r, score: tok.score(id), id, lid, rid });
      }
    }
  }
  merges.sort((a, b) => b.score - a.score || a.id - b.id || a.lid - b.lid || a.rid - b.rid);
  const added = [...specials].map(([id, content]) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added.sort((a, b) => a.id - b.id),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "▁" },
        { type: "Replace", pattern: { String: " " }, content: "▁" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [tok.bos], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => [m.l, m.r]),
    },
  };
  const config = {
    tokenizer_class: "LlamaTokenizer",
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    add_bos_token: true,
    add_eos_token: false,
    legacy: true,
    clean_up_tokenization_spaces: false,
    model_max_length: 1_000_000_000,
  };
  return { tokenizer, config };
}

/**
 * Builds a {@link Tokenizer} over a parsed `tokenizer.json` (and optional
 * `tokenizer_config.json`). BOS/EOS are the config's `bos_token`/`eos_token`
 * (default `<s>`/`</s>`). `vocabSize` is the model's, which may exceed the
 * tokenizer's (padded embeddings) by `MODEL_LIMITS.maxVocabPaddingFraction`
 * of it (at least `MODEL_LIMITS.minVocabPadding` ids); ids without a piece decode to "".
 * Streaming decode follows text-generation-inference's `decode_token`:
 * decode a small window of recent tokens and emit only what extends the
 * previous window's text, holding back a trailing U+FFFD (an incomplete
 * UTF-8 character), so any decoder pipeline (sentencepiece, byte-level) works.
 * `piece()` is the token's string in the vocabulary; `score()` is 0 (BPE keeps ranks, not scores).
 * @throws CheckpointError naming `path` when the JSON is not a tokenizer the library reads,
 *   its vocabulary exceeds `vocabSize` or falls short of it by more than the padding allowed,
 *   or BOS/EOS are not in it.
 */
export function createHfTokenizer(
  path: string,
  json: Record<string, unknown>,
  vocabSize: number,
  config: Record<string, unknown> = {},
): Tokenizer {
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(json, { clean_up_tokenization_spaces: false, ...config });
  } catch (err) {
    throw new CheckpointError(path, `cannot build tokenizer: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
  }
  const vocab = hf.get_vocab(true);
  let size = 0;
  for (const id of vocab.values()) size = Math.max(size, id + 1);
  if (size > vocabSize) {
    throw new CheckpointError(
      path,
      `tokenizer has ids up to ${size - 1}, more than the model's vocab_size ${vocabSize}`,
    );
  }
  const padding = Math.max(MODEL_LIMITS.minVocabPadding, Math.floor(vocabSize * MODEL_LIMITS.maxVocabPaddingFraction));
  if (vocabSize - size > padding) {
    throw new CheckpointError(
      path,
      `tokenizer has ${size} ids, fewer than the model's vocab_size ${vocabSize} by more than the ${padding} padding allowed (a tokenizer of another model?)`,
    );
  }
  const tokenName = (v: unknown, fallback: string): string =>
    typeof v === "string" ? v : typeof v === "object" && v !== null && "content" in v ? String(v.content) : fallback;
  const idOf = (name: string, what: string): number => {
    const id = hf.token_to_id(name);
    if (id === undefined) throw new CheckpointError(path, `has no ${what} token ${JSON.stringify(name)}`);
    return id;
  };
  const bos = idOf(tokenName(config["bos_token"], "<s>"), "BOS");
  const eos = idOf(tokenName(config["eos_token"], "</s>"), "EOS");
  let maxTokenLength = 0;
  for (const piece of vocab.keys()) maxTokenLength = Math.max(maxTokenLength, Buffer.byteLength(piece));

  const checkToken = (token: number): void => {
    if (!Number.isInteger(token) || token < 0 || token >= vocabSize) {
      throw new RangeError(`token ${token} is outside the vocabulary [0, ${vocabSize})`);
    }
  };
  const text = (ids: number[]): string => {
    const known = ids.filter((id) => id < size);
    return known.length === 0 ? "" : hf.decode(known, { skip_special_tokens: true });
  };

  function createDecoder(prevToken: number = bos): StreamingDecoder {
    checkToken(prevToken);
    const tokens = [prevToken];
    let prefixOffset = 0;
    let readOffset = 1;
    const step = (final: boolean): string => {
      const prefix = text(tokens.slice(prefixOffset, readOffset));
      const full = text(tokens.slice(prefixOffset));
      if (full.length > prefix.length && (final || !full.endsWith("\uFFFD"))) {
        prefixOffset = readOffset;
        readOffset = tokens.length;
        return full.slice(prefix.length);
      }
      return "";
    };
    return {
      push(token) {
        checkToken(token);
        tokens.push(token);
        return step(false);
      },
      flush() {
        return readOffset < tokens.length ? step(true) : "";
      },
    };
  }

  return {
    vocabSize,
    bos,
    eos,
    maxTokenLength,
    piece(token) {
      checkToken(token);
      return Buffer.from(hf.id_to_token(token) ?? "", "utf8").toString("latin1");
    },
    score(token) {
      checkToken(token);
      return 0;
    },
    encode(s: string, opts: EncodeOptions) {
      const ids = hf.encode(s, { add_special_tokens: false }).ids;
      return [...(opts.bos ? [bos] : []), ...ids, ...(opts.eos ? [eos] : [])];
    },
    createDecoder,
    decode(tokens, prevToken = bos) {
      const d = createDecoder(prevToken);
      return tokens.map((t) => d.push(t)).join("") + d.flush();
    },
  };
}

/**
 * Loads a Hugging Face `tokenizer.json` (and `tokenizer_config.json` beside
 * it, when present) as a {@link Tokenizer}; see {@link createHfTokenizer}.
 * @throws CheckpointError naming the file when it is missing or not a usable tokenizer.
 */
export async function loadHfTokenizer(path: string, vocabSize: number): Promise<Tokenizer> {
  const readJson = async (p: string, optional: boolean): Promise<Record<string, unknown> | undefined> => {
    let text: string;
    try {
      text = await readFile(p, "utf8");
    } catch (err) {
      if (optional && (err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new CheckpointError(p, `cannot read tokenizer: ${(err as Error).message}`, undefined, undefined, {
        cause: err,
      });
    }
    try {
      return JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw new CheckpointError(p, `is not valid JSON: ${(err as Error).message}`, undefined, undefined, {
        cause: err,
      });
    }
  };
  const json = (await readJson(path, false))!;
  const config = await readJson(join(dirname(path), "tokenizer_config.json"), true);
  return createHfTokenizer(path, json, vocabSize, config ?? {});
}

/**
 * Loads a tokenizer by file name: `*.json` is a Hugging Face tokenizer
 * ({@link loadHfTokenizer}), anything else llama2.c's `tokenizer.bin` (`loadTokenizer`).
 * @throws CheckpointError naming the file when it is missing or bad.
 */
export function loadModelTokenizer(path: string, vocabSize: number): Promise<Tokenizer> {
  return basename(path).endsWith(".json") ? loadHfTokenizer(path, vocabSize) : loadTokenizer(path, vocabSize);
}
