/**
 * SIGTERM and SIGINT that arrive while `serve` or `worker` is still loading its modules, before
 * its own handlers are installed: held from the bin's first line, so the command stops cleanly as
 * soon as it can (exit 0, docs/service.md, "Exit codes") instead of being killed by the signal
 * (exit 143, 130). Kept apart from everything else so the bin can load it before the rest.
 */

let held: NodeJS.Signals | null = null;
let holding = false;

const onSignal = (signal: NodeJS.Signals) => {
  // A second signal means "now", as it does once the command runs.
  if (held !== null) {
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
    return;
  }
  held = signal;
};
const onTerm = () => onSignal("SIGTERM");
const onInt = () => onSignal("SIGINT");

/** Holds SIGTERM/SIGINT until `releaseStopSignals()` (the bin, for `serve` and `worker`). */
export function holdStopSignals(): void {
  if (holding) return;
  holding = true;
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onInt);
}

/**
 * Stops holding; returns the signal that arrived meanwhile, or null. Call it right after the
 * command installed its own handlers (in the same turn of the event loop, so none is missed).
 */
export function releaseStopSignals(): NodeJS.Signals | null {
  if (!holding) return null;
  holding = false;
  process.off("SIGTERM", onTerm);
  process.off("SIGINT", onInt);
  const signal = held;
  held = null;
  return signal;
}
