import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "coverage/**", ".ci/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-restricted-imports": ["error", { paths: ["mongodb", "pg", "ioredis", "better-sqlite3"].map((name) => ({ name, message: "Drivers are optional peers: import them lazily, only in their own entry point." })) }],
    },
  },
  {
    files: ["src/db/mongodb/**", "src/db/postgres/**", "src/db/sqlite/**", "src/redis/**", "test/**", "bench/**", "examples/**"],
    rules: { "no-restricted-imports": "off" },
  },
);
