/** Small helpers shared by the integration tests. */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { bundled, cliEntry, startLocalCluster, type LocalCluster, type LocalClusterOptions } from "@tessera/cli";

/** Starts a local cluster (child processes) on the bundled stories260K unless told otherwise. */
export function startTestCluster(options: Partial<LocalClusterOptions> = {}): Promise<LocalCluster> {
  return startLocalCluster({
    model: bundled.model,
    tokenizer: bundled.tokenizer,
    verbose: process.env["TESSERA_TEST_VERBOSE"] === "1",
    ...options,
  });
}

/** The reference text of ../shared/models/README.md: run.c, greedy, BOS only, 256 positions. */
export async function referenceText(readme: string): Promise<string> {
  const text = await readFile(readme, "utf8");
  const m = /Reference behaviour[\s\S]*?```\n([\s\S]*?)\n```/.exec(text);
  if (!m) throw new Error(`${readme}: no reference text block found`);
  return m[1]!;
}

/** Result of running the CLI. */
export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `tessera ...args` as a child process and collects its output.
 * `onStderr` sees stderr as it arrives and may signal the child.
 */
export function runCli(
  args: string[],
  options: {
    env?: NodeJS.ProcessEnv;
    onStderr?: (chunk: string, child: ReturnType<typeof spawn>) => void;
    timeoutMs?: number;
  } = {},
): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliEntry, ...args], {
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c;
      options.onStderr?.(c, child);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 240_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Parses JSONL text into objects. */
export function parseJsonl<T = Record<string, unknown>>(text: string): T[] {
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as T);
}
