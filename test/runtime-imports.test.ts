import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const here = (name: string) => fileURLToPath(new URL(`./fixtures/runtimes/${name}`, import.meta.url));

// docs/runtimes.md: importing the package needs no Node-only module (Cloudflare Workers, edge
// runtimes); a part that needs one loads it when it runs. The built package (dist/) under Node with
// those modules refused, as a user imports it.
describe("the package without Node-only modules", () => {
  it("imports and serves a metered route, the credit API and the console; a ledger file says why not", async () => {
    const { stdout } = await run(
      process.execPath,
      ["--import", here("no-node-only.mjs"), here("no-node-only-app.mjs")],
      {
        cwd: fileURLToPath(new URL("..", import.meta.url)),
      },
    );
    const out = JSON.parse(stdout.trim().split("\n").at(-1) as string) as Record<string, unknown>;
    expect(out).toMatchObject({ charged: "7", balance: 93, console: 200 });
    expect(out.ledgerFile).toMatch(/^ConfigurationError: node:(fs|path) is not available on Node\.js v/);
  }, 30_000);

  it("the refusing loader refuses (the test above would prove nothing without it)", async () => {
    const failed = await run(
      process.execPath,
      ["--import", here("no-node-only.mjs"), "-e", 'await import("node:fs")'],
      {
        cwd: fileURLToPath(new URL("..", import.meta.url)),
      },
    ).catch((error: { stderr: string }) => error.stderr);
    expect(failed).toMatch(/Node-only module imported: node:fs/);
  });
});
