// The README's quick start with a ledger file, closed right after its operations (no turn of the
// event loop in between), on whichever runtime runs this file: every line of the operations must be
// in the file once close() resolved. On Deno the writer thread cannot reach the file (docs/runtimes.md)
// and finds that out only once it runs, after close() was asked; the event loop writes the lines.
// Run by .ci/runtimes/check.sh in a fresh project; exits 1 on a missing line. See issue 60.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCreditManager } from "credit-management";

const file = join(mkdtempSync(join(tmpdir(), "cm-ledger-close-")), "ledger.jsonl");
const manager = await createCreditManager({ ledger: { filePath: file } });
const ids = [
  (await manager.credits.addCredits("user-1", 100, { description: "Welcome bonus" })).id,
  (await manager.credits.deductCredits("user-1", 30)).id,
];
await manager.credits.reserveCredits("user-1", 20);
await manager.close();

const lines = readFileSync(file, "utf8").split("\n").filter((line) => line !== "");
const written = lines.map((line) => JSON.parse(line).id);
const missing = ids.filter((id) => !written.includes(id));
if (lines.length < 3 || missing.length > 0) {
  console.error(`ledger file after close(): ${lines.length} lines, missing ${missing.length} of the operations' entries`);
  process.exit(1);
}
console.log(`ledger file closed right after 3 operations: ${lines.length} lines, every entry there`);
