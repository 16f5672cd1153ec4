// Lint for what the type checker does not catch: promises nobody awaits or
// handles (a floating promise hides errors and races shutdown).
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["**/dist/**", "**/node_modules/**", "packages/proto/src/gen/**"] },
  {
    files: [
      "packages/*/src/**/*.ts",
      "services/*/src/**/*.ts",
      "apps/*/src/**/*.ts",
      "packages/*/test/**/*.ts",
      "services/*/test/**/*.ts",
      "apps/*/test/**/*.ts",
      "test/**/*.ts",
      "bench/**/*.ts",
    ],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: {
        project: [
          "./packages/*/tsconfig.json",
          "./services/*/tsconfig.json",
          "./apps/*/tsconfig.json",
          "./tsconfig.test.json",
        ],
        tsconfigRootDir: import.meta.dirname,
      },
    },
    plugins: { "@typescript-eslint": tseslint.plugin },
    rules: {
      "@typescript-eslint/no-floating-promises": [
        "error",
        // node:test's test() returns a promise the runner itself tracks.
        {
          allowForKnownSafeCalls: [
            { from: "package", package: "node:test", name: ["test", "it", "describe", "suite"] },
          ],
        },
      ],
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: false }],
      "@typescript-eslint/await-thenable": "error",
    },
  },
  {
    // The CLI is a deployable (apps/cli): no package or service imports it.
    files: ["packages/*/src/**/*.ts", "services/*/src/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            { group: ["@tessera/cli", "@tessera/cli/*"], message: "packages and services never import the CLI" },
          ],
        },
      ],
    },
  },
  {
    // Issue 12's size limits on written code (generated code and the
    // WebAssembly module emitter excepted), blank lines and comments not
    // counted: a function that outgrows them is split by subject.
    files: ["packages/*/src/**/*.ts", "services/*/src/**/*.ts", "apps/*/src/**/*.ts"],
    ignores: ["packages/attention/src/wasm-attention.ts"],
    rules: {
      "max-lines-per-function": ["error", { max: 150, skipBlankLines: true, skipComments: true }],
      "max-lines": ["error", { max: 700, skipBlankLines: true, skipComments: true }],
    },
  },
);
