import { startEmbeddedCluster, type EmbeddedClusterFlags } from "../embedded-cluster.js";
import { bundled, defaultTokenizerFor } from "../paths.js";

/** Flags of `tessera serve`. */
export interface ServeFlags extends EmbeddedClusterFlags {
  model?: string;
  tokenizer?: string;
  httpPort: number;
  tokens?: string;
  quiet: boolean;
}

/**
 * `tessera serve`: starts the embedded cluster with its coordinator's HTTP
 * API on `--http-port`, prints the URL on stdout once it answers, and runs
 * until `signal` aborts; then stops the cluster (the coordinator stops
 * taking requests, gives those in flight its grace period, cancels the
 * rest; the nodes drain; the temp directory goes). Resolves 0.
 * @throws Error when a bad model or tokenizer, a taken port or a cluster
 *   process that exits keeps it from serving.
 */
export async function serveCommand(flags: ServeFlags, signal: AbortSignal): Promise<number> {
  const model = flags.model ?? bundled.model;
  const tokenizer = flags.tokenizer ?? defaultTokenizerFor(model);
  const cluster = await startEmbeddedCluster(model, tokenizer, flags, {
    signal,
    quiet: flags.quiet,
    coordinator: ["--http-port", String(flags.httpPort), ...(flags.tokens ? ["--tokens", flags.tokens] : [])],
  });
  try {
    const coordinator = cluster.node("coordinator").child;
    process.stdout.write(`http://127.0.0.1:${flags.httpPort}/v1\n`);
    if (!flags.quiet) process.stderr.write("serving the OpenAI-compatible API; Ctrl-C to stop\n");
    await new Promise<void>((resolve, reject) => {
      if (signal.aborted) return resolve();
      signal.addEventListener("abort", () => resolve(), { once: true });
      coordinator.once("exit", (code, sig) =>
        reject(new Error(`the coordinator exited (${sig ?? code}):\n${cluster.node("coordinator").logTail()}`)),
      );
    });
  } finally {
    await cluster.stop();
  }
  return 0;
}
