// On a fresh clone `npm ci && npm run demo` worked but `npx tessera` then
// failed with "could not determine executable to run" (issue 12): npm links
// a bin only if its target exists at install time, and dist/ is built
// later. The bin is a committed launcher, so the link exists after `npm ci`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { cleanEnv, tessera } from "./cli-run.js";

const run = promisify(execFile);
const packageDir = fileURLToPath(new URL("..", import.meta.url));
const repoRoot = join(packageDir, "../..");
const pkg = JSON.parse(await readFile(join(packageDir, "package.json"), "utf8")) as {
  version: string;
  bin: Record<string, string>;
};

test("the tessera bin's target is a file in the repository and runs --version once built", async () => {
  const target = join(packageDir, pkg.bin["tessera"]!);
  const { stdout: tracked } = await run("git", ["ls-files", "--error-unmatch", relative(repoRoot, target)], {
    cwd: repoRoot,
  });
  assert.equal(tracked.trim(), relative(repoRoot, target), "committed, so `npm ci` links it");
  const r = await tessera(["--version"], { entry: target, env: cleanEnv() });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${pkg.version}\n`);
});

test("`npm exec -- tessera --version` from the repository root", async () => {
  const { stdout } = await run("npm", ["exec", "--offline", "--", "tessera", "--version"], {
    cwd: repoRoot,
    env: cleanEnv(),
  });
  assert.equal(stdout, `${pkg.version}\n`);
});

test("the launcher says to run `npm run build` when dist/ is missing", async (t) => {
  // A copy of the package without dist/.
  const dir = await mkdtemp(join(tmpdir(), "tessera-bin-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const launcher = join(dir, pkg.bin["tessera"]!);
  await mkdir(dirname(launcher));
  await copyFile(join(packageDir, pkg.bin["tessera"]!), launcher);
  const r = await tessera(["--version"], { entry: launcher, env: cleanEnv() });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not built yet: run `npm run build`/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
});
