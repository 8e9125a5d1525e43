import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { serveSettings } from "../src/serve/settings.js";
import { keys, startServe } from "./serve-process.js";

/** `CREDIT_OVERDRAFT_LIMIT` (docs/service.md): the manager's `overdraftLimit`, 0 unless set. */
describe("serve: CREDIT_OVERDRAFT_LIMIT", () => {
  const dir = mkdtempSync(join(tmpdir(), "serve-overdraft-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("is 0 by default, a number of credits or unlimited; anything else is refused", () => {
    expect(serveSettings({}, {}).CREDIT_OVERDRAFT_LIMIT).toBe(0);
    expect(serveSettings({}, { CREDIT_OVERDRAFT_LIMIT: "25" }).CREDIT_OVERDRAFT_LIMIT).toBe(25);
    expect(serveSettings({}, { CREDIT_OVERDRAFT_LIMIT: "unlimited" }).CREDIT_OVERDRAFT_LIMIT).toBe("unlimited");
    for (const bad of ["-1", "1.5", "null", "Infinity"])
      expect(() => serveSettings({}, { CREDIT_OVERDRAFT_LIMIT: bad })).toThrow(/CREDIT_OVERDRAFT_LIMIT/);
  });

  it("bounds the debt an after-service deduction over HTTP may make", async () => {
    const env = { CREDIT_SQLITE_PATH: join(dir, "credits.sqlite") };
    const admin = (await keys(["create", "--role", "admin"], env)).stdout.trim();
    const s = await startServe({ ...env, CREDIT_OVERDRAFT_LIMIT: "25" });
    try {
      const deduct = (amount: number) =>
        fetch(`${s.base}/admin/credits/users/acme/deduct`, {
          method: "POST",
          headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
          body: JSON.stringify({ amount, afterService: true }),
        });
      expect((await deduct(26)).status).toBe(402);
      expect((await deduct(25)).status).toBe(200);
      const balance = await fetch(`${s.base}/admin/credits/users/acme/balance`, {
        headers: { authorization: `Bearer ${admin}` },
      });
      expect(await balance.json()).toMatchObject({ balance: -25, debt: 25 });
    } finally {
      await s.stop();
    }
  });
});
