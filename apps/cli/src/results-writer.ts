import { open, rename, rm, type FileHandle } from "node:fs/promises";
import type { Result } from "@tessera/proto";
import { tesseraResultLine, type TesseraResultLine } from "@tessera/core";

/** One line of a results file (snake_case, as the input file): core's Tessera result line. */
export type ResultLine = TesseraResultLine;

/** The JSON object written for one Result (core's {@link tesseraResultLine}). */
export const resultLine = (r: Result): ResultLine => tesseraResultLine(r);

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
