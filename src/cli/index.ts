#!/usr/bin/env node
import { holdStopSignals } from "../serve/signals.js";

// `serve` and `worker` stop on SIGTERM/SIGINT. Loading the CLI's modules takes a moment (most of a
// second under load): a signal sent then is held, not fatal, and the command stops cleanly once
// it has started (docs/service.md, "Exit codes").
const command = process.argv[2];
if (command === "serve" || command === "worker") holdStopSignals();

void import("./run.js")
  .then(({ runCli }) =>
    runCli(process.argv.slice(2), {
      stdout: (text) => process.stdout.write(text),
      stderr: (text) => process.stderr.write(text),
    }),
  )
  .then((code) => {
    process.exitCode = code;
    // Everything is closed by now (the worker closes its store, queue and ledger file); a driver's
    // handle that still lingers must not keep the process past its answer.
    setTimeout(() => process.exit(code), 3000).unref();
  });
