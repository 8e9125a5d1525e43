import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { keys, startServe } from "./serve-process.js";

const run = promisify(execFile);
const root = join(import.meta.dirname, "..");

/**
 * A client for other languages (docs/service.md): the OpenAPI document `serve` publishes is
 * complete enough for a generator. `openapi-typescript` generates the types again from the running
 * service (they must be the ones committed as examples/credit-api.d.ts), and
 * examples/service-client.ts runs through `openapi-fetch` against it.
 */
describe("a client generated from serve's OpenAPI document", () => {
  const dir = mkdtempSync(join(tmpdir(), "serve-client-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("generates the committed types and runs the example script against serve", async () => {
    const env = { CREDIT_SQLITE_PATH: join(dir, "credits.sqlite") };
    const admin = (await keys(["create", "--role", "admin"], env)).stdout.trim();
    const user = (await keys(["create", "--role", "user:alice"], env)).stdout.trim();
    const s = await startServe(env);
    try {
      const doc = await (await fetch(`${s.base}/credits/openapi.json`)).text();
      writeFileSync(join(dir, "doc.json"), doc);
      await run(
        process.execPath,
        [join(root, "node_modules/openapi-typescript/bin/cli.js"), join(dir, "doc.json"), "-o", join(dir, "api.d.ts")],
        { cwd: root, timeout: 60_000 },
      );
      // Regenerate after an API change: see the comment at the top of examples/service-client.ts.
      expect(readFileSync(join(dir, "api.d.ts"), "utf8")).toBe(
        readFileSync(join(root, "examples/credit-api.d.ts"), "utf8"),
      );
      const { stdout } = await run(process.execPath, ["--import", "tsx", join(root, "examples/service-client.ts")], {
        cwd: root,
        env: { ...process.env, CREDIT_SERVICE_URL: s.base, ADMIN_KEY: admin, USER_KEY: user },
        timeout: 60_000,
      });
      expect(stdout).toContain("added: 100, balance 100");
      expect(stdout).toContain("committed: 12 of a hold of 30");
      expect(stdout).toContain("alice reads bob: 403");
      expect(stdout).toContain("balance: 88, available 88");
    } finally {
      await s.stop();
    }
  }, 120_000);
});
