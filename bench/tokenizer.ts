/**
 * `node --import tsx bench/tokenizer.ts` (issue 13): encode time of one
 * prompt by size, best of `--runs`, for the llama2.c tokenizer
 * (tokenizer.ts) and the same vocabulary through `@huggingface/tokenizers`
 * (hf-tokenizer.ts, converted by llama2cToHfTokenizer).
 *
 * Prompts: the bundled stories prompts joined by spaces and repeated up to
 * each size in KB (1 KB = 1024 bytes of ASCII). Vocabularies: tok512.bin and
 * Llama 2's tokenizer.bin from ../shared/models. Prints one line per
 * (tokenizer, vocabulary, size) with the best and worst time in seconds and
 * the number of tokens, then the 1-minute load average (os.loadavg) at the
 * start and the end. A run is not started for a size once one run of the
 * previous size took longer than `--max-seconds` (the old quadratic encoder
 * would take minutes for 1 MB). Options: --sizes 16,32,60,1024 (KB),
 * --runs 3, --max-seconds 60, --no-hf (the llama2.c tokenizer only).
 */
import { readFile } from "node:fs/promises";
import { loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createHfTokenizer, llama2cToHfTokenizer, loadTokenizer, type Tokenizer } from "../packages/model/src/index.js";

const SHARED = fileURLToPath(new URL("../../shared/", import.meta.url));

const { values } = parseArgs({
  options: {
    sizes: { type: "string", default: "16,32,60,1024" },
    runs: { type: "string", default: "3" },
    "max-seconds": { type: "string", default: "60" },
    "no-hf": { type: "boolean", default: false },
  },
});
const sizes = values.sizes.split(",").map(Number);
const runs = Number(values.runs);
const maxSeconds = Number(values["max-seconds"]);

const lines = (await readFile(join(SHARED, "prompts", "stories.jsonl"), "utf8")).split("\n").filter((l) => l.trim());
const story = lines.map((l) => (JSON.parse(l) as { prompt: string }).prompt).join(" ") + " ";
const promptOf = (kb: number): string => story.repeat(Math.ceil((kb * 1024) / story.length)).slice(0, kb * 1024);

function measure(name: string, t: Tokenizer): void {
  for (const kb of sizes) {
    const text = promptOf(kb);
    const times: number[] = [];
    let tokens = 0;
    for (let r = 0; r < runs; r++) {
      const start = performance.now();
      tokens = t.encode(text, { bos: true, eos: false }).length;
      times.push((performance.now() - start) / 1000);
      if (times[r]! > maxSeconds) break;
    }
    const best = Math.min(...times).toFixed(3);
    const worst = Math.max(...times).toFixed(3);
    console.log(`${name}  ${kb} KB: best ${best} s, worst ${worst} s of ${times.length}, ${tokens} tokens`);
    if (Math.min(...times) > maxSeconds) {
      console.log(`${name}  larger sizes skipped (over ${maxSeconds} s)`);
      return;
    }
  }
}

console.log(`load average (1 min) at start: ${loadavg()[0]!.toFixed(2)}`);
for (const [file, vocabSize] of [
  ["tok512.bin", 512],
  ["tokenizer.bin", 32000],
] as const) {
  const path = join(SHARED, "models", file);
  const t = await loadTokenizer(path, vocabSize);
  measure(`llama2c ${file}`, t);
  if (!values["no-hf"]) {
    const hf = llama2cToHfTokenizer(t);
    measure(`hf      ${file}`, createHfTokenizer(path, hf.tokenizer, vocabSize, hf.config));
  }
}
console.log(`load average (1 min) at end: ${loadavg()[0]!.toFixed(2)}`);
