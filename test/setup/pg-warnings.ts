/**
 * node-pg prints a DeprecationWarning when a client is given a query while another one runs on it
 * (refused from pg 9). Our PostgreSQL store shares one client between the units of a batch and
 * must send their statements one at a time: any test file that makes pg warn fails.
 * @see issue 24, item 12
 */
import { afterEach } from "vitest";

const seen: string[] = [];
process.on("warning", (warning) => {
  if (warning.name === "DeprecationWarning" && /already executing a query/.test(warning.message))
    seen.push(warning.message);
});

afterEach(async () => {
  // The warning is emitted on a later tick than the call that caused it.
  await new Promise((resolve) => setImmediate(resolve));
  if (seen.length > 0) {
    const message = seen.splice(0).join("\n");
    throw new Error(`node-pg warned that a client ran two queries at once:\n${message}`);
  }
});
