import type { NextConfig } from "next";

const config: NextConfig = {
  // Loaded by Node.js at run time, not bundled: the package imports its optional drivers (mongodb,
  // better-sqlite3, …) only when a store needs them, and a bundler would try to resolve every one
  // at build time (docs/runtimes.md).
  serverExternalPackages: ["credit-management"],
};

export default config;
