import { readFile } from "node:fs/promises";
import { Coordinator, RpcError, createClient, type GenerateEvent, type Summary } from "@tessera/proto";
import { generateRequest, parsePromptsJsonl, wireKvPlacement, type PromptSpec, type KvPlacement } from "@tessera/core";
import { startEmbeddedCluster, type EmbeddedClusterFlags } from "../embedded-cluster.js";
import type { LocalCluster } from "../local-cluster.js";
import { bundled, defaultTokenizerFor } from "../paths.js";
import { RunProgress } from "../progress.js";
import { describeJobPlan } from "@tessera/coordinator";
import { ResultsWriter } from "../results-writer.js";

/** Flags of `tessera run`. */
export interface RunFlags extends EmbeddedClusterFlags {
  model?: string;
  tokenizer?: string;
  prompts?: string;
  prompt?: string;
  out: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed?: number;
  kv: KvPlacement;
  cluster?: string;
  /** Bearer token for a --cluster coordinator started with --tokens. */
  token?: string;
  quiet: boolean;
}

/**
 * `tessera run`: validates the prompts file (every bad line reported before
 * anything starts), starts an embedded local cluster unless `--cluster` is
 * given, streams results to `--out` and progress to stderr.
 * Resolves the process exit code: 0 all prompts done, 3 some prompts failed.
 * @throws InputFileError / RpcError / Error with a message for the user.
 */
export async function runCommand(flags: RunFlags, signal: AbortSignal): Promise<number> {
  const model = flags.model ?? bundled.model;
  const tokenizer = flags.tokenizer ?? defaultTokenizerFor(model);
  let prompts: PromptSpec[];
  if (flags.prompt !== undefined) {
    prompts = [{ id: "prompt", prompt: flags.prompt, line: 0 }];
  } else {
    const path = flags.prompts ?? bundled.prompts;
    prompts = parsePromptsJsonl(
      path,
      // Bytes, so that a line that is not UTF-8 is refused naming it (not replaced by U+FFFD).
      await readFile(path).catch((err: Error) => {
        throw new Error(`${path}: cannot read prompts file: ${err.message}`);
      }),
    );
  }
  const seed = flags.seed ?? Date.now() % 2 ** 31;
  if (flags.seed === undefined && flags.temperature > 0 && !flags.quiet) process.stderr.write(`seed ${seed}\n`);

  let cluster: LocalCluster | undefined;
  const writer = await ResultsWriter.open(flags.out);
  const progress = new RunProgress(flags.quiet);
  let failed = 0;
  let summary: Summary | undefined;
  try {
    let address = flags.cluster;
    if (!address) {
      // Fails before starting anything when the model or tokenizer is bad.
      cluster = await startEmbeddedCluster(model, tokenizer, flags, { signal, quiet: flags.quiet });
      address = cluster.address;
    }
    const client = createClient(Coordinator, address, {}, flags.token === undefined ? {} : { token: flags.token });
    try {
      const stream = client.generate(
        generateRequest(
          prompts,
          { maxTokens: flags.maxTokens, temperature: flags.temperature, topP: flags.topP, seed },
          {
            kv: wireKvPlacement(flags.kv),
            // With --cluster, a model the coordinator serves (by name or its
            // served path; empty: its default) with its own tokenizer.
            modelPath: flags.cluster ? (flags.model ?? "") : model,
            tokenizerPath: flags.cluster ? (flags.tokenizer ?? "") : tokenizer,
          },
        ),
        { signal },
      );
      for await (const ev of stream as AsyncIterable<GenerateEvent>) {
        const e = ev.event;
        if (e.case === "progress") progress.update(e.value);
        else if (e.case === "result") {
          if (e.value.finishReason === "error") {
            failed++;
            progress.stop();
            process.stderr.write(`prompt ${e.value.id}: ${e.value.error}\n`);
          }
          await writer.write(e.value);
        } else if (e.case === "summary") summary = e.value;
        else if (e.case === "plan") progress.log(describeJobPlan(e.value));
      }
    } catch (err) {
      if (signal.aborted) throw new Error("interrupted");
      const e = RpcError.from(err);
      throw new Error(`coordinator ${address}: ${RpcError.codeName(e.code)}: ${e.message}`, { cause: err });
    } finally {
      client.close();
    }
    progress.stop();
    await writer.commit();
  } catch (err) {
    progress.stop();
    await writer.abort();
    throw err;
  } finally {
    await cluster?.stop();
  }
  if (summary && !flags.quiet) printSummary(summary, flags.out);
  return failed > 0 ? 3 : 0;
}

function printSummary(s: Summary, out: string): void {
  const b = s.decodeBreakdown;
  const lines = [
    `${s.prompts} prompts (${s.errors} failed), ${s.promptTokens} prompt tokens, ${s.completionTokens} generated in ${s.wallSeconds.toFixed(2)} s`,
    `decode: ${s.decodeTokensPerSecond.toFixed(1)} tokens/s`,
  ];
  if (b && b.steps > 0) {
    const pct = (x: number) => `${((100 * x) / b.stepSeconds).toFixed(0)}%`;
    lines.push(
      `decode step time: ${((1000 * b.stepSeconds) / b.steps).toFixed(2)} ms/step = dense ${pct(b.denseSeconds)}, attention ${pct(b.attentionComputeSeconds)}, attention wire ${pct(b.attentionWireSeconds)}, coordinator ${pct(b.coordinatorSeconds)}`,
    );
  }
  if (out !== "-") lines.push(`results: ${out}`);
  process.stderr.write(lines.join("\n") + "\n");
}
