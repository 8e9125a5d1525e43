import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const root = join(import.meta.dirname, "..");

/** The HTTP examples run their own demo against themselves (no PORT) and exit: they must keep working. */
describe("HTTP examples", () => {
  const example = async (file: string) => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", join(root, "examples", file)], {
      cwd: root,
      env: { ...process.env, PORT: "" },
      timeout: 60_000,
    });
    return stdout;
  };

  it("express-middleware.ts charges the recorded usage and refuses an empty account", async () => {
    const out = await example("express-middleware.ts");
    expect(out).toContain("X-Credits-Deducted: 28");
    expect(out).toMatch(/balance: 972/);
    expect(out).toContain("user-2 (no credits): 402");
  });

  it("hono.ts commits a streamed answer when it ends", async () => {
    const out = await example("hono.ts");
    expect(out).toContain("committed 15");
    expect(out).toMatch(/balance: 985/);
  });

  it("fastify.ts meters through hooks and through meter() in a route", async () => {
    const out = await example("fastify.ts");
    expect(out).toContain("committed 13");
    expect(out).toContain("X-Credits-Deducted: 57");
    expect(out).toMatch(/balance: 930/);
  });
});
