import { KvPlacement } from "@tessera/proto";
import { withCoordinator } from "./coordinator-call.js";

/** A served model as `tessera models --json` prints it (paths empty for a tenant). */
export interface ModelRow {
  name: string;
  /** The first model: what a request naming none runs. */
  default: boolean;
  /** Where its prompts' KV goes when a request leaves it auto: "auto", "memory" or "storage". */
  kv: string;
  modelPath: string;
  tokenizerPath: string;
}

/**
 * `tessera models`: the models coordinator `cluster` serves
 * (Coordinator.ListModels), the default first; with `token`, a bearer
 * token for a coordinator started with --tokens (paths are shown to an
 * admin only). Prints a table (NAME, KV, DEFAULT, MODEL, TOKENIZER; "-"
 * for a path not shown), or with `json` one JSON array of {@link ModelRow}.
 * Resolves exit code 0.
 * @throws Error naming the coordinator and the refusal (unreachable, bad token).
 */
export async function modelsCommand(cluster: string, token: string | undefined, json: boolean): Promise<number> {
  const rows = await withCoordinator(cluster, token, async (client) => {
    const { models } = await client.listModels({}, { deadline: 10_000 });
    return models.map((m, i): ModelRow => ({
      name: m.name,
      default: i === 0,
      kv: (KvPlacement[m.kv] ?? "AUTO").toLowerCase(),
      modelPath: m.modelPath,
      tokenizerPath: m.tokenizerPath,
    }));
  });
  if (json) {
    process.stdout.write(`${JSON.stringify(rows)}\n`);
    return 0;
  }
  const table = [
    ["NAME", "KV", "DEFAULT", "MODEL", "TOKENIZER"],
    ...rows.map((r) => [r.name, r.kv, r.default ? "yes" : "", r.modelPath || "-", r.tokenizerPath || "-"]),
  ];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  for (const row of table)
    process.stdout.write(`${row.map((v, c) => v.padEnd(widths[c]!)).join("  ")}`.trimEnd() + "\n");
  return 0;
}
