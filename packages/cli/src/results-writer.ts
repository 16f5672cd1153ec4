import { open, rename, rm, type FileHandle } from "node:fs/promises";
import type { Result } from "@tessera/proto";

/** One line of a results file (snake_case, as the input file). */
export interface ResultLine {
  id: string;
  prompt: string;
  completion: string;
  prompt_tokens: number;
  completion_tokens: number;
  completion_token_ids: number[];
  finish_reason: string;
  error?: string;
  kv_node: string;
  timings: { prefill_s: number; decode_s: number; total_s: number };
}

/** The JSON object written for one Result. */
export function resultLine(r: Result): ResultLine {
  return {
    id: r.id,
    prompt: r.prompt,
    completion: r.completion,
    prompt_tokens: r.promptTokenIds.length,
    completion_tokens: r.completionTokenIds.length,
    completion_token_ids: r.completionTokenIds,
    finish_reason: r.finishReason,
    ...(r.error ? { error: r.error } : {}),
    kv_node: r.kvNode,
    timings: {
      prefill_s: round(r.timings?.prefillSeconds ?? 0),
      decode_s: round(r.timings?.decodeSeconds ?? 0),
      total_s: round(r.timings?.totalSeconds ?? 0),
    },
  };
}

const round = (s: number) => Math.round(s * 1e6) / 1e6;

/**
 * Writes results as JSONL, one line per result as it arrives, to
 * `<path>.partial`; `commit()` renames it over `path`, so an interrupted run
 * never leaves a truncated results file where a complete one was expected
 * (and never clobbers an earlier complete one). "-" writes to stdout.
 */
export class ResultsWriter {
  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle | undefined,
  ) {}

  static async open(path: string): Promise<ResultsWriter> {
    if (path === "-") return new ResultsWriter(path, undefined);
    return new ResultsWriter(path, await open(`${path}.partial`, "w"));
  }

  async write(r: Result): Promise<void> {
    const line = JSON.stringify(resultLine(r)) + "\n";
    if (this.fh) await this.fh.write(line);
    else process.stdout.write(line);
  }

  /** Flushes and moves the file into place. */
  async commit(): Promise<void> {
    if (!this.fh) return;
    await this.fh.sync();
    await this.fh.close();
    await rename(`${this.path}.partial`, this.path);
  }

  /** Closes and removes the partial file. Idempotent. */
  async abort(): Promise<void> {
    if (!this.fh) return;
    await this.fh.close().catch(() => undefined);
    await rm(`${this.path}.partial`, { force: true });
  }
}
