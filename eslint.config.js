import js from "@eslint/js";
import tseslint from "typescript-eslint";

const drivers = ["mongodb", "pg", "ioredis", "better-sqlite3"].map((name) => ({
  name,
  message: "Drivers are optional peers: import them lazily, only in their own entry point.",
}));

// The core's back doors, for src/core's own services only: outside it, the package's modules reach
// the core through their module context (`init(ctx)`, src/core/module.ts) and everything else through
// the credit service's public methods, as code outside the package does (docs/modules.md).
const coreInternals = {
  regex: "(^|/)core/services/credit-(service|core)\\.js$",
  importNames: ["creditCore", "CreditCore", "moduleContext"],
  message:
    "outside src/core, reach the core through a module's context (ModuleContext, src/core/module.ts) or the credit service's public methods, never creditCore/CreditCore.",
};
// The stores' entry points and a module's store parts, which may import their drivers.
const driverFiles = [
  "src/modules/*/mongodb.ts",
  "src/modules/*/postgres.ts",
  "src/modules/*/sqlite.ts",
  "src/db/mongodb/**",
  "src/db/postgres/**",
  "src/db/sqlite/**",
  "src/redis/**",
];

export default tseslint.config(
  {
    ignores: [
      "dist/**",
      "node_modules/**",
      "coverage/**",
      ".ci/**",
      "src/console/vendor.ts",
      "examples/credit-api.d.ts",
      // The mongosh script each released schema version made (test/schema-fixtures.test.ts).
      "test/fixtures/schema/v*/**",
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-restricted-imports": ["error", { paths: drivers }],
    },
  },
  {
    // The rules live once, in pure functions (docs/concepts.md): src/core/domain imports only the models,
    // the errors, itself, and what hashing needs — never storage, services or I/O.
    files: ["src/core/domain/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          paths: drivers,
          patterns: [
            {
              regex: "^(?!\\./|\\.\\./models/|\\.\\./errors\\.js$|node:crypto$|safe-stable-stringify$)",
              message:
                "src/core/domain imports only ../models, ../errors.js, ./ (itself), node:crypto and safe-stable-stringify.",
            },
          ],
        },
      ],
    },
  },
  {
    // A module's rules (src/modules/<name>/rules*.ts, ARCHITECTURE.md "Modules") are domain too: the
    // models, the errors, the core's rules, the module's own model and rules.
    files: ["src/modules/*/rules*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          paths: drivers,
          patterns: [
            {
              regex:
                "^(?!\\./(rules|model)[\\w-]*\\.js$|\\./errors\\.js$|\\.\\./\\.\\./core/module\\.js$|\\.\\./\\.\\./core/models/|\\.\\./\\.\\./models-entry\\.js$|\\.\\./\\.\\./core/domain/|\\.\\./\\.\\./core/errors\\.js$|node:crypto$|safe-stable-stringify$)",
              message:
                "a module's rules import only the models, the errors (the core's and the module's own), src/core/domain, the module seam (src/core/module.ts), the module's own model and rules, node:crypto and safe-stable-stringify.",
            },
          ],
        },
      ],
    },
  },
  {
    // A module's store parts are loaded only by their store's entry point, as the stores are.
    files: [...driverFiles, "test/**", "bench/**", "examples/**"],
    rules: { "no-restricted-imports": "off" },
  },
  {
    // src/ outside the core: no back door into it (`coreInternals`); the drivers as above.
    files: ["src/**"],
    ignores: ["src/core/**", "src/modules/*/rules*.ts", ...driverFiles],
    rules: { "no-restricted-imports": ["error", { paths: drivers, patterns: [coreInternals] }] },
  },
  {
    files: driverFiles,
    ignores: ["src/core/**"],
    rules: { "no-restricted-imports": ["error", { patterns: [coreInternals] }] },
  },
);
