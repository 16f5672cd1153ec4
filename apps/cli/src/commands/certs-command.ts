/**
 * `tessera certs` (a development CA and certificates for mutual TLS) and `tessera token`.
 */
import type { Command } from "commander";
import { int, list, withSignals } from "../flags.js";

const impl = () => import("./certs.js");

/** Adds `tessera certs` and `tessera token` to `program`. */
export function addCertsCommands(program: Command): void {
  program
    .command("certs")
    .description(
      "Make a local CA and certificates for mutual TLS between Tessera's services (for development): ca.pem, " +
        "one certificate per role (coordinator.pem, gpu-node.pem, memory-node.pem, storage-node.pem: server and " +
        "client, the role as a SAN URI spiffe://tessera/role/<role>), client.pem (an operator's client identity; " +
        "tenants get tokens) and their -key.pem files. Each RPC checks its caller's role. A CA already in --out " +
        "is reused.",
    )
    .option("--out <dir>", "folder to write", "certs")
    .option(
      "--host <name|ip>",
      "extra name of the role certificates, e.g. *.tessera.svc.cluster.local (repeatable or comma-separated; " +
        "localhost, 127.0.0.1 and ::1 always)",
      list,
      [],
    )
    .option("--days <n>", "validity of new certificates in days (1..3650)", int("--days", 1), 365)
    .option("--force", "make a new CA and overwrite existing files", false)
    .option("-q, --quiet", "print nothing on stderr", false)
    .action((o) =>
      withSignals(async () =>
        (await impl()).certsCommand({
          out: o.out,
          hosts: o.host,
          days: o.days,
          force: o.force,
          quiet: o.quiet,
        }),
      ),
    );
  program
    .command("token")
    .description(
      "Print a new bearer token on stdout, and on stderr its entry for the coordinator's --tokens file (which " +
        "holds only the token's SHA-256).",
    )
    .requiredOption("--tenant <name>", "the tenant the token acts as")
    .option("--admin", "an admin token: sees every tenant's jobs, adds and removes nodes", false)
    .action((o) => withSignals(async () => (await impl()).tokenCommand({ tenant: o.tenant, admin: o.admin })));
}
