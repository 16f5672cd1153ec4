import { spawn } from "node:child_process";
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "./rpc.js";
import { tempDir } from "./temp-dir.js";

/** A private nats-server ({@link startPrivateNats}). */
export interface PrivateNats {
  /** "127.0.0.1:<port>" */
  servers: string;
  /** The server's log so far (for failure messages). */
  output(): string;
  /** Stops the server (SIGTERM, then waits for it) and removes its store. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts `nats-server` (from PATH) on a free loopback port with JetStream
 * in a temp store dir, limited to `maxFileStore` bytes of file storage when
 * given (JetStream then refuses writes past it: "insufficient resources",
 * API error 10023). Resolves once the server says it is ready.
 * @throws Error with the server's log when it does not start within 10 s.
 */
export async function startPrivateNats(options: { maxFileStore?: number } = {}): Promise<PrivateNats> {
  const dir = await tempDir("tessera-nats-");
  const port = await freePort();
  const limit = options.maxFileStore !== undefined ? `, max_file_store: ${options.maxFileStore}` : "";
  const config = join(dir.path, "nats.conf");
  await writeFile(
    config,
    `listen: "127.0.0.1:${port}"\njetstream { store_dir: ${JSON.stringify(join(dir.path, "js"))}${limit} }\n`,
  );
  const proc = spawn("nats-server", ["-c", config], { stdio: ["ignore", "ignore", "pipe"] });
  let output = "";
  let ready: () => void = () => {};
  const started = new Promise<void>((resolve) => (ready = resolve));
  proc.stderr.setEncoding("utf8").on("data", (c: string) => {
    output = (output + c).slice(-20_000);
    if (output.includes("Server is ready")) ready();
  });
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = once(proc, "exit");
        proc.kill("SIGTERM");
        await exited;
      }
      await dir.remove();
    })());
  const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 10_000).unref());
  const exit = once(proc, "exit").then(() => "exit" as const);
  const outcome = await Promise.race([started.then(() => "ready" as const), timeout, exit]);
  if (outcome !== "ready") {
    await stop();
    throw new Error(`nats-server did not start on 127.0.0.1:${port} (${outcome}):\n${output}`);
  }
  return { servers: `127.0.0.1:${port}`, output: () => output, stop };
}
