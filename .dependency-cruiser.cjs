// Layering of the workspaces (docs: ARCHITECTURE.md "Layout"), run by `npm run lint`:
// no import cycles between packages (type-only imports included) nor runtime
// cycles between modules, and no package importing a service or the CLI;
// services never import each other. Only src/ is checked: tests may start
// whatever they test. packages/testing is the harness that starts real
// clusters for tests and benchmarks, so it may import the services and the CLI.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "no-circular-packages",
      comment: "A package must not reach itself through another package (@tessera/a -> @tessera/b -> @tessera/a).",
      severity: "error",
      from: { path: "^(packages|services|apps)/([^/]+)/" },
      to: { circular: true, via: { pathNot: "^$1/$2/" } },
    },
    {
      name: "no-circular",
      comment: "No module reaches itself at run time (a cycle with a type-only import in it is allowed).",
      severity: "error",
      from: {},
      to: { circular: true, viaOnly: { dependencyTypesNot: ["type-only"] } },
    },
    {
      name: "packages-not-to-services-or-cli",
      comment: "Packages are libraries: they never import a service, the CLI or an app.",
      severity: "error",
      from: { path: "^packages/", pathNot: "^packages/(testing|cli)/" },
      to: { path: "^(services/|apps/|packages/cli/)" },
    },
    {
      name: "cli-not-to-testing",
      comment: "The CLI ships; the test harness does not.",
      severity: "error",
      from: { path: "^(packages/cli|apps)/" },
      to: { path: "^packages/testing/" },
    },
    {
      name: "services-not-to-other-services",
      comment: "Services never import each other; what they share lives in packages/.",
      severity: "error",
      from: { path: "^services/([^/]+)/" },
      to: { path: "^services/", pathNot: "^services/$1/" },
    },
    {
      name: "not-to-unresolvable",
      comment: "An import that resolves to nothing (a missing workspace, a typo).",
      severity: "error",
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    includeOnly: "^(packages|services|apps)/[^/]+/src/",
    doNotFollow: { path: "node_modules" },
    exclude: { path: "(^|/)(dist|node_modules)/|^packages/proto/src/gen/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.depcruise.json" },
    enhancedResolveOptions: {
      exportsFields: ["exports"],
      conditionNames: ["import", "require", "node", "default", "types"],
    },
  },
};
