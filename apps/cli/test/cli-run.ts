/** Runs the built CLI (apps/cli/dist/main.js, `npm run build`) as a child process, for the CLI's own tests. */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

/** The built entry point the `tessera` bin launches. */
export const builtEntry = fileURLToPath(new URL("../dist/main.js", import.meta.url));

/** What a CLI run gave. */
export interface CliOutcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `node <entry> ...args` with `env` (default: this process's) and
 * collects its output; killed with SIGKILL after `timeoutMs`.
 */
export function tessera(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; entry?: string } = {},
): Promise<CliOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [options.entry ?? builtEntry, ...args], {
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** This environment without the TESSERA_* variables a developer's shell may hold. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("TESSERA_")) delete env[k];
  return { ...env, ...extra };
}
