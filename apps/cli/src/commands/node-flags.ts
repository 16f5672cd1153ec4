/**
 * The flags every `tessera node <role>` shares: listen address, node
 * registry, price and the self-profile.
 */
import { Option, type Command } from "commander";
import { ROLES, type NodeRole } from "@tessera/core";
import { attentionKernelNames } from "@tessera/attention";
import { int, metricsPort, natsAuthFlags, natsPrefix, num, transport } from "../flags.js";

/** A node's price, advertised by Info (and in its profile) for the coordinator's planner. */
export const price = () =>
  new Option(
    "--price <$/h>",
    "what this node costs in US dollars per hour (default: a --profile FILE's, else 0 = unknown)",
  )
    .argParser(num("--price", 0, 1e6))
    .env("TESSERA_PRICE");
/**
 * Where a node of `role` listens (default: its service's default host, the
 * role's default port from ROLES), and (with --nats) where it registers and
 * the address it advertises there.
 */
export const hostPort = (c: Command, role: NodeRole, defaults: { readonly host: string }) =>
  natsAuthFlags(transport(c, "service"))
    .addOption(metricsPort())
    .addOption(new Option("--host <host>", "address to listen on").default(defaults.host).env("TESSERA_HOST"))
    .addOption(
      new Option("--port <port>", "port (0 = free port)")
        .argParser(int("--port"))
        .default(ROLES[role].defaultPort)
        .env("TESSERA_PORT"),
    )
    .addOption(
      new Option("--nats <servers>", "NATS servers (comma-separated host:port): register in the node registry").env(
        "TESSERA_NATS",
      ),
    )
    .addOption(natsPrefix())
    .addOption(
      new Option(
        "--advertise <host:port>",
        "address registered for others to reach this node (default: the bound one)",
      ).env("TESSERA_ADVERTISE"),
    );
/** The node registry options of a node command's parsed options. */
export const registryOf = (o: { nats?: string; natsPrefix?: string; advertise?: string }) => ({
  nats: o.nats,
  natsPrefix: o.natsPrefix,
  advertise: o.advertise,
});
/** The self-profile (issue 4): measured at start, off, or read from a file --profile-only wrote. */
export const profiled = (c: Command) =>
  c
    .addOption(
      new Option(
        "--profile <measure|off|FILE>",
        "measure this machine at start (a few seconds) and advertise the profile; off: advertise none; " +
          "FILE: advertise the profile JSON that --profile-only wrote",
      )
        .default("measure")
        .env("TESSERA_PROFILE"),
    )
    .addOption(
      new Option(
        "--profile-only",
        "measure this machine (whatever --profile says), print the profile (proto JSON on stdout, a table on " +
          "stderr) and exit without serving",
      ).default(false),
    );
/**
 * `--attention-kernel NAME` of an attention node: a kernel registered in
 * @tessera/attention (the choices), default the role's own.
 */
export const attentionKernel = (dflt: string) =>
  new Option("--attention-kernel <name>", "attention kernel (a registered one; the profile measures it)")
    .choices(attentionKernelNames())
    .default(dflt)
    .env("TESSERA_ATTENTION_KERNEL");
