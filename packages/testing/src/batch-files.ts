/**
 * Small batch input files for job tests and the load bench: short story
 * openings the bundled stories260K model continues, as Tessera JSONL or as
 * OpenAI Batch API lines.
 */

/** Prompts stories260K continues well (a few tokens each). */
export const STORY_OPENINGS: readonly string[] = [
  "Once upon a time",
  "Sam found a shiny stone",
  "The little girl wanted",
  "One day, a cat",
  "Tom had a red ball",
];

/**
 * A long prompt of `chars` characters (ASCII, so as many UTF-8 bytes): the
 * story openings joined by spaces, repeated (the tokeniser tests' and the
 * two-tenant bench's load).
 */
export function storyText(chars: number): string {
  const s = STORY_OPENINGS.join(" ") + " ";
  return s.repeat(Math.ceil(chars / s.length)).slice(0, chars);
}

/** A Tessera JSONL file of `n` prompts (ids p0..p{n-1}, openings in turn), each line with `extra` fields. */
export const tesseraJobFile = (n: number, extra: Record<string, unknown> = {}): string =>
  Array.from({ length: n }, (_, i) =>
    JSON.stringify({ id: `p${i}`, prompt: STORY_OPENINGS[i % STORY_OPENINGS.length], ...extra }),
  )
    .join("\n")
    .concat("\n");

/** An OpenAI Batch API input file (`/v1/completions`, custom ids req-0..), one line per body. */
export const openAiJobFile = (bodies: Record<string, unknown>[]): string =>
  bodies
    .map((body, i) => JSON.stringify({ custom_id: `req-${i}`, method: "POST", url: "/v1/completions", body }))
    .join("\n");
