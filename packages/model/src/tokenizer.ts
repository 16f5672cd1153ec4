/**
 * llama2.c's tokenizer: the `tokenizer.bin` layout written by its
 * `tokenizer.py export` (int32 max_token_length, then per token: float32
 * score, int32 byte length, the piece's bytes; little-endian), the greedy
 * sentencepiece-style BPE `encode()` and the `decode()` + `safe_printf()` of
 * llama2.c `run.c`.
 *
 * Pieces are kept as byte strings (one JS char per byte, "latin1"), so map
 * lookups and concatenations are byte-exact like run.c's `char*` handling;
 * text is turned into UTF-8 only at the edges.
 */
import { readFile } from "node:fs/promises";
import { CheckpointError } from "@tessera/core";
import { mergeGreedy } from "./bpe-merge.js";

/** Token id of BOS in llama2.c / sentencepiece vocabularies. */
export const BOS_TOKEN = 1;
/** Token id of EOS in llama2.c / sentencepiece vocabularies. */
export const EOS_TOKEN = 2;

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /** Prepend BOS (1). */
  bos: boolean;
  /** Append EOS (2). */
  eos: boolean;
}

/**
 * Streaming detokeniser of one sequence. Keeps the previous token (for
 * run.c's "strip the leading space after BOS") and a UTF-8 decoder, so a
 * character split over several byte tokens comes out whole.
 */
export interface StreamingDecoder {
  /** Text completed by `token`; "" while a multi-byte character is pending. */
  push(token: number): string;
  /** Ends the sequence: returns what is pending (an incomplete character becomes U+FFFD). */
  flush(): string;
}

/** A loaded llama2.c vocabulary. */
export interface Tokenizer {
  readonly vocabSize: number;
  /** BOS token id (1). */
  readonly bos: number;
  /** EOS token id (2). */
  readonly eos: number;
  /** Length in bytes of the longest piece, from the file header. */
  readonly maxTokenLength: number;
  /** Piece bytes of `token` as a latin1 string (one char per byte). */
  piece(token: number): string;
  /** Merge score of `token`. */
  score(token: number): number;
  /**
   * Token ids of `text`, as llama2.c run.c `encode()`: optional BOS, a
   * dummy-prefix " " token when `text` is non-empty, one token per UTF-8
   * codepoint (or its `<0xXX>` byte tokens when the codepoint is not a
   * piece), then greedy merges of the adjacent pair with the highest-scoring
   * concatenation (leftmost on ties), then optional EOS. O(n log n) in the
   * text's length n (bpe-merge.ts); run.c's loop is O(n^2).
   * Unlike C, a NUL character does not end the text; it becomes `<0x00>`.
   * @throws RangeError when a byte has no `<0xXX>` token in this vocabulary.
   */
  encode(text: string, opts: EncodeOptions): number[];
  /**
   * A fresh streaming decoder for one sequence; see {@link StreamingDecoder}.
   * @param prevToken the token before the first pushed one (BOS by default,
   *   so the first piece loses its leading space as in run.c).
   */
  createDecoder(prevToken?: number): StreamingDecoder;
  /**
   * Text of `tokens` (one sequence), as a fresh decoder would produce it
   * followed by `flush()`. `prevToken` is the token before `tokens[0]`
   * (BOS by default: the first piece loses its leading space, as run.c).
   */
  decode(tokens: readonly number[], prevToken?: number): string;
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

/** Builds a tokenizer from pieces (latin1 byte strings) and scores. */
export function createTokenizer(
  pieces: readonly string[],
  scores: Float32Array | readonly number[],
  maxTokenLength = 0,
): Tokenizer {
  if (pieces.length !== scores.length) throw new RangeError(`${pieces.length} pieces but ${scores.length} scores`);
  const vocabSize = pieces.length;
  const scoreOf = Float32Array.from(scores);
  // First id wins for a duplicated piece (bsearch in run.c picks an arbitrary one; vocabularies have none).
  const ids = new Map<string, number>();
  pieces.forEach((p, i) => {
    if (!ids.has(p)) ids.set(p, i);
  });
  // Byte fallback tokens, looked up by their spelling rather than assuming id = byte + 3.
  const byteToken = new Int32Array(256).fill(-1);
  // What each token prints: a byte token (`<0xXX>`, either case, as run.c's
  // sscanf) prints its raw byte, any other token its piece.
  const printed: string[] = pieces.map((p, id) => {
    const m = BYTE_PIECE.exec(p);
    if (!m) return p;
    const b = parseInt(m[1]!, 16);
    if (byteToken[b] === -1 && p === `<0x${m[1]!.toUpperCase()}>`) byteToken[b] = id;
    return String.fromCharCode(b);
  });

  const checkToken = (token: number): void => {
    if (!Number.isInteger(token) || token < 0 || token >= vocabSize) {
      throw new RangeError(`token ${token} is outside the vocabulary [0, ${vocabSize})`);
    }
  };

  const pairMerge = (left: number, right: number): number => ids.get(pieces[left]! + pieces[right]!) ?? -1;

  function encode(text: string, opts: EncodeOptions): number[] {
    const bytes = Buffer.from(text, "utf8");
    const tokens: number[] = [];
    if (opts.bos) tokens.push(BOS_TOKEN);
    if (bytes.length > 0) {
      const dummy = ids.get(" ");
      if (dummy === undefined) throw new RangeError('the vocabulary has no " " piece for the dummy prefix');
      tokens.push(dummy);
    }
    // One codepoint at a time (at most 4 bytes, as run.c's str_buffer).
    let i = 0;
    while (i < bytes.length) {
      let end = i + 1;
      while (end < bytes.length && (bytes[end]! & 0xc0) === 0x80 && end - i < 4) end++;
      const cp = bytes.toString("latin1", i, end);
      const id = ids.get(cp);
      if (id !== undefined) {
        tokens.push(id);
      } else {
        for (let k = i; k < end; k++) {
          const bt = byteToken[bytes[k]!]!;
          if (bt < 0) throw new RangeError(`the vocabulary has no byte token for 0x${bytes[k]!.toString(16)}`);
          tokens.push(bt);
        }
      }
      i = end;
    }
    // Greedy merges as run.c (see bpe-merge.ts): the highest-scoring
    // concatenation first, leftmost on ties, in O(n log n) instead of run.c's
    // rescan of every pair after each merge.
    const merged = mergeGreedy(tokens, pairMerge, (id) => scoreOf[id]!);
    if (opts.eos) merged.push(EOS_TOKEN);
    return merged;
  }

  function createDecoder(prevToken: number = BOS_TOKEN): StreamingDecoder {
    checkToken(prevToken);
    const utf8 = new TextDecoder("utf-8", { fatal: false });
    let prev = prevToken;
    return {
      push(token: number): string {
        checkToken(token);
        let out = printed[token]!;
        // sentencepiece strips the leading space of the first piece after BOS
        // (llama2.c PR #89); run.c does it before turning <0x20> into a byte.
        const isByteToken = out !== pieces[token];
        if (prev === BOS_TOKEN && !isByteToken && out.startsWith(" ")) out = out.slice(1);
        prev = token;
        if (out.length === 0) return "";
        // run.c's safe_printf drops a single-byte piece that is neither
        // printable nor whitespace (control codes). Bytes >= 0x80 are kept
        // (run.c, in the C locale, drops them too) so that UTF-8 characters
        // spelled with byte tokens come out whole.
        if (out.length === 1) {
          const b = out.charCodeAt(0);
          const printable = b >= 0x20 && b <= 0x7e;
          const space = b >= 0x09 && b <= 0x0d;
          if (b < 0x80 && !printable && !space) return "";
        }
        return utf8.decode(Buffer.from(out, "latin1"), { stream: true });
      },
      flush(): string {
        return utf8.decode();
      },
    };
  }

  return {
    vocabSize,
    bos: BOS_TOKEN,
    eos: EOS_TOKEN,
    maxTokenLength,
    piece(token) {
      checkToken(token);
      return pieces[token]!;
    },
    score(token) {
      checkToken(token);
      return scoreOf[token]!;
    },
    encode,
    createDecoder,
    decode(tokens, prevToken = BOS_TOKEN) {
      const d = createDecoder(prevToken);
      return tokens.map((t) => d.push(t)).join("") + d.flush();
    },
  };
}

/**
 * A fresh streaming decoder for one sequence of `tokenizer`; the same as
 * `tokenizer.createDecoder(prevToken)`. See {@link StreamingDecoder}.
 */
export function createDecoder(tokenizer: Tokenizer, prevToken?: number): StreamingDecoder {
  return tokenizer.createDecoder(prevToken);
}

/**
 * Loads llama2.c's `tokenizer.bin` (see the module comment for the layout).
 * @param vocabSize number of tokens the model expects; the file must hold exactly that many.
 * @throws CheckpointError naming `path` when the file is missing, truncated
 *   (expected vs found bytes), holds a different number of tokens than
 *   `vocabSize`, or has bytes left after the last token.
 */
export async function loadTokenizer(path: string, vocabSize: number): Promise<Tokenizer> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new CheckpointError(path, `cannot read tokenizer: ${(err as Error).message}`, undefined, undefined, {
      cause: err,
    });
  }
  return parseTokenizer(path, buf, vocabSize);
}

/**
 * Parses the bytes of a `tokenizer.bin`; `path` is used in errors only.
 * @throws CheckpointError as {@link loadTokenizer}.
 */
export function parseTokenizer(path: string, buf: Uint8Array, vocabSize: number): Tokenizer {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const need = (offset: number, bytes: number, what: string): void => {
    if (offset + bytes > buf.byteLength) {
      throw new CheckpointError(
        path,
        `tokenizer ends inside ${what} (truncated, or made for a smaller vocabulary than the model's ${vocabSize}; the expected size is a lower bound)`,
        offset + bytes,
        buf.byteLength,
      );
    }
  };
  need(0, 4, "the header");
  const maxTokenLength = view.getInt32(0, true);
  const pieces: string[] = [];
  const scores = new Float32Array(vocabSize);
  let offset = 4;
  for (let i = 0; i < vocabSize; i++) {
    need(offset, 8, `token ${i} of ${vocabSize}`);
    scores[i] = view.getFloat32(offset, true);
    const len = view.getInt32(offset + 4, true);
    offset += 8;
    if (len < 0 || len > 1 << 16)
      throw new CheckpointError(path, `token ${i} has an implausible length ${len}; not a tokenizer.bin?`);
    need(offset, len, `token ${i} of ${vocabSize}`);
    pieces.push(Buffer.from(buf.buffer, buf.byteOffset + offset, len).toString("latin1"));
    offset += len;
  }
  if (offset !== buf.byteLength) {
    throw new CheckpointError(
      path,
      `tokenizer has ${buf.byteLength - offset} bytes after its ${vocabSize} tokens; does it belong to a model with a different vocab_size?`,
      offset,
      buf.byteLength,
    );
  }
  return createTokenizer(pieces, scores, maxTokenLength);
}
