import cliProgress from "cli-progress";
import type { Progress } from "@tessera/proto";

/**
 * Progress of a run on stderr: a bar with prompts done, tokens and tokens/s
 * on a terminal, a line every few seconds otherwise (cli-progress's
 * notTTY schedule), nothing with `quiet`.
 */
export class RunProgress {
  private readonly bar: cliProgress.SingleBar | undefined;
  private started = false;

  constructor(quiet: boolean) {
    this.bar = quiet
      ? undefined
      : new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: "{bar} {value}/{total} prompts | {tokens} tokens | {tps} tokens/s | {duration_formatted}",
            noTTYOutput: true,
            notTTYSchedule: 5000,
            hideCursor: true,
          },
          cliProgress.Presets.shades_classic,
        );
  }

  update(p: Progress): void {
    if (!this.bar) return;
    const payload = { tokens: p.tokensGenerated.toString(), tps: p.tokensPerSecond.toFixed(1) };
    if (!this.started) {
      this.bar.start(p.promptsTotal, p.promptsDone, payload);
      this.started = true;
    } else this.bar.update(p.promptsDone, payload);
  }

  /** Writes a line on stderr (above the bar on a terminal; the bar restarts at the next update). Nothing with `quiet`. */
  log(line: string): void {
    if (!this.bar) return;
    this.stop();
    process.stderr.write(line + "\n");
  }

  stop(): void {
    if (this.started) this.bar?.stop();
    this.started = false;
  }
}
