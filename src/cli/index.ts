#!/usr/bin/env node
import { runCli } from "./run.js";

void runCli(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
}).then((code) => {
  process.exitCode = code;
  // Everything is closed by now (the worker closes its store, queue and ledger file); a driver's
  // handle that still lingers must not keep the process past its answer.
  setTimeout(() => process.exit(code), 3000).unref();
});
