#!/usr/bin/env node
/**
 * The `tessera` command line: assembles the commands, each defined with its
 * flags in ./commands/*-command.ts (the roles in coordinator.ts and
 * node-<role>.ts); each command's work lives in ./commands and in the role
 * packages, loaded when the command runs.
 */
import { createRequire } from "node:module";
import { Command, CommanderError } from "commander";
import { addCertsCommands } from "./commands/certs-command.js";
import { addCoordinatorCommand } from "./commands/coordinator.js";
import { addJobCommands } from "./commands/jobs-command.js";
import { addModelCommands } from "./commands/model-command.js";
import { addModelsCommand } from "./commands/models-command.js";
import { addGpuNodeCommand } from "./commands/node-gpu.js";
import { addMemoryNodeCommand } from "./commands/node-memory.js";
import { addStorageNodeCommand } from "./commands/node-storage.js";
import { addNodesCommand } from "./commands/nodes-command.js";
import { addPlanCommand } from "./commands/plan-command.js";
import { addRunCommand } from "./commands/run-command.js";
import { addServeCommand } from "./commands/serve-command.js";
import { endQuietlyWhenStdoutCloses } from "./flags.js";

/** Exit code of a usage error (unknown option or command, missing or bad argument); 1 is a real failure. */
const USAGE_ERROR = 2;

const { version } = createRequire(import.meta.url)("../package.json") as { version: string };
endQuietlyWhenStdoutCloses();

const program = new Command("tessera")
  .description("Run LLMs split across gpu-, memory- and storage-nodes, placed for tokens/s per dollar.")
  .showHelpAfterError()
  .configureHelp({ showGlobalOptions: true })
  .version(version)
  // Before any command is added, so that every command inherits it: commander
  // throws instead of exiting, and usage errors exit 2 (below).
  .exitOverride();

addRunCommand(program);
addServeCommand(program);
addCoordinatorCommand(program);
const node = program.command("node").description("Start one node of a role.");
addGpuNodeCommand(node);
addMemoryNodeCommand(node);
addStorageNodeCommand(node);
addNodesCommand(program);
addModelsCommand(program);
addPlanCommand(program);
addJobCommands(program);
addCertsCommands(program);
addModelCommands(program);

program.parseAsync().catch((err: unknown) => {
  // Commander has printed its message (and the help) already; --help and --version exit 0.
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? 0 : USAGE_ERROR;
    return;
  }
  process.stderr.write(`tessera: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
