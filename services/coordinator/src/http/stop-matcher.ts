/**
 * OpenAI's `stop`: strings matched on the decoded text; the text ends
 * before the first one found, which is not included. While streaming, text
 * that could be the start of a stop string is held back until it is known
 * not to be one.
 */

/** One choice's text as it grows, cut at its first stop string. */
export class StopMatcher {
  private text = "";
  private sent = 0;
  private stoppedAt: number | undefined;

  constructor(private readonly stops: readonly string[]) {}

  /** Whether a stop string was seen. */
  get stopped(): boolean {
    return this.stoppedAt !== undefined;
  }

  /** Adds decoded text; returns the text now safe to send (possibly ""). */
  push(piece: string): string {
    if (this.stoppedAt !== undefined) return "";
    this.text += piece;
    const longest = Math.max(0, ...this.stops.map((s) => s.length));
    const from = Math.max(0, this.sent - longest);
    let cut = -1;
    for (const s of this.stops) {
      const at = this.text.indexOf(s, from);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stoppedAt = cut;
      return this.take(cut);
    }
    return this.take(this.text.length - this.heldBack());
  }

  /**
   * The whole text of a finished choice (`completion`, as its Result has it:
   * the engine's text may run past the stop string, or add bytes a last
   * character completed), cut at the first stop string; and what of it has
   * not been sent yet.
   */
  finish(completion: string): { text: string; rest: string } {
    let cut = completion.length;
    for (const s of this.stops) {
      const at = completion.indexOf(s);
      if (at >= 0 && at < cut) cut = at;
    }
    const text = completion.slice(0, cut);
    const rest = text.slice(Math.min(this.sent, text.length));
    this.sent = text.length;
    return { text, rest };
  }

  /** Length of the longest end of the text that begins some stop string. */
  private heldBack(): number {
    let held = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.text.length); k > held; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          held = k;
          break;
        }
      }
    }
    return held;
  }

  private take(end: number): string {
    if (end <= this.sent) return "";
    const out = this.text.slice(this.sent, end);
    this.sent = end;
    return out;
  }
}
