#!/usr/bin/env node
// The `tessera` bin. A committed launcher rather than dist/main.js itself:
// npm links a bin only if its target exists at install time, and dist/ is
// built after `npm ci` (`npm run build`).
import { existsSync } from "node:fs";

const main = new URL("../dist/main.js", import.meta.url);
if (!existsSync(main)) {
  process.stderr.write("tessera: the CLI is not built yet: run `npm run build` in the repository first\n");
  process.exit(1);
}
await import(main.href);
