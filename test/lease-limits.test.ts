// Leases under spend limits and scoped grants (docs/teams-and-limits.md, "Leases"): a leased charge
// naming a spender or feature counts toward the limits that apply to it exactly as on the exact
// path, a block is never larger than what those limits still allow, and scoped grants fund it.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { runProcess } from "./fixtures/processes.js";
import { createCreditManager, SpendLimitError } from "../src/index.js";
import { limitRoom } from "../src/core/domain/limits.js";
import { addLeaseLine, leaseLineOf, type FileWindow } from "../src/modules/leases/rules.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";

const manager = () => createCreditManager({ db: new InMemoryDbManager() });

describe("limitRoom (domain)", () => {
  it("is the least left under the limits that apply, and the earliest end of their windows", () => {
    const at = Date.UTC(2030, 0, 10, 12);
    const limits = [
      {
        spender: "bob",
        feature: null,
        amount: 100,
        period: "day" as const,
        cycle: null,
        since: 0,
        used: 30,
        windowStart: Date.UTC(2030, 0, 10),
      },
      {
        spender: null,
        feature: null,
        amount: 500,
        period: "month" as const,
        cycle: null,
        since: 0,
        used: 0,
        windowStart: null,
      },
      {
        spender: "eve",
        feature: null,
        amount: 1,
        period: "day" as const,
        cycle: null,
        since: 0,
        used: 0,
        windowStart: null,
      },
    ];
    expect(limitRoom(limits, { spender: "bob", feature: null }, at)).toEqual({
      left: 70,
      until: Date.UTC(2030, 0, 11),
    });
    expect(limitRoom(limits, { spender: null, feature: null }, at)).toEqual({ left: 500, until: Date.UTC(2030, 1, 1) });
    expect(limitRoom([], { spender: null, feature: null }, at)).toBeNull();
  });
});

describe("a named lease in the ledger file (domain)", () => {
  it("its hold line names its spender and feature, so a recovered settle charges under them", () => {
    const windows = new Map<string, FileWindow>();
    const hold = { eventType: "lease", action: "hold", userId: "u", lease: "L", window: 1, reservationId: "r1" };
    addLeaseLine(windows, leaseLineOf({ ...hold, spender: "bob", feature: "images" })!);
    addLeaseLine(
      windows,
      leaseLineOf({ eventType: "lease", action: "charge", userId: "u", lease: "L", window: 1, amount: 4 })!,
    );
    expect(windows.get("L:1")).toMatchObject({ spender: "bob", feature: "images", total: 4, requests: 1 });
    addLeaseLine(windows, leaseLineOf({ ...hold, lease: "M" })!);
    expect(windows.get("M:1")?.spender).toBeUndefined();
  });
});

describe("leases under spend limits", () => {
  it("a leased charge naming a spender counts toward its limit: the charge that would pass it is a SpendLimitError", async () => {
    const m = await manager();
    try {
      await m.credits.addCredits("u", 1_000_000);
      await m.credits.setLimits("u", [{ spender: "bob", amount: 5000, period: "day" }]);
      const lease = m.credits.leases({ size: 100, settleEveryMs: 30_000 });
      let charged = 0;
      let refused: unknown = null;
      for (let i = 0; i < 600 && refused === null; i++) {
        try {
          await lease.charge("u", 10, { spender: "bob" });
          charged += 10;
        } catch (e) {
          refused = e;
        }
      }
      expect(refused).toBeInstanceOf(SpendLimitError);
      expect((refused as SpendLimitError).details).toMatchObject({ remaining: expect.any(Number) });
      expect(typeof (refused as SpendLimitError).details?.resetsAt).toBe("string");
      expect(charged).toBe(5000);
      await lease.close();
      const [limit] = await m.credits.getLimits("u");
      expect(limit).toMatchObject({ used: 5000, remaining: 0 });
      // Another spender is not held back by bob's limit.
      expect((await lease2(m).charge("u", 10, { spender: "alice" })).amount).toBe(10);
    } finally {
      await m.close();
    }
  });

  it("a block is never larger than what the limit still allows; below that, the exact path", async () => {
    const m = await manager();
    try {
      await m.credits.addCredits("u", 1_000_000);
      await m.credits.setLimits("u", [{ spender: "bob", amount: 300, period: "day" }]);
      const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
      const r = await lease.charge("u", 10, { spender: "bob" });
      expect(r.via).toBe("exact"); // 300 left is below exactBelow × size
      const [limit] = await m.credits.getLimits("u");
      expect(limit).toMatchObject({ used: 10 });
      await lease.close();
    } finally {
      await m.close();
    }
  });

  it("an account-wide limit sizes the unnamed block too (no wrong refusal)", async () => {
    const m = await manager();
    try {
      await m.credits.addCredits("u", 1_000_000);
      await m.credits.setLimits("u", [{ amount: 800, period: "day" }]);
      const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
      expect((await lease.charge("u", 5)).amount).toBe(5);
      await lease.close();
      expect((await m.credits.getLimits("u"))[0]).toMatchObject({ used: 5 });
    } finally {
      await m.close();
    }
  });

  it("leased charges naming a scoped feature draw from the scoped grant, and the window's entry names them", async () => {
    const m = await manager();
    try {
      await m.credits.addCredits("u", 100_000);
      await m.credits.addCredits("u", 10_000, { scope: { features: ["images"] } });
      const lease = m.credits.leases({ size: 100, settleEveryMs: 30_000 });
      let leased = 0;
      for (let i = 0; i < 50; i++) if ((await lease.charge("u", 7, { feature: "images" })).via === "lease") leased++;
      expect(leased).toBeGreaterThan(40);
      await lease.close();
      expect((await m.credits.getUserCreditsInfo("u", { feature: "images" })).available).toBe(110_000 - 350);
      expect((await m.credits.getUserCreditsInfo("u")).available).toBe(100_000); // the unscoped grant untouched
      const settles = (await m.credits.getCreditHistory("u", { limit: 100 })).items.filter(
        (e) => e.type === "commit_reserved" && e.metadata?.leaseWindow !== undefined,
      );
      expect(settles.length).toBeGreaterThan(0);
      for (const e of settles) expect(e.feature).toBe("images");
    } finally {
      await m.close();
    }
  });

  it("a metered call naming a spender is served from its lease and counts toward its limit", async () => {
    const m = await manager();
    try {
      await m.credits.addCredits("u", 100_000);
      await m.credits.setLimits("u", [{ spender: "bob", amount: 10_000, period: "day" }]);
      const lease = m.credits.leases({ size: 100, settleEveryMs: 30_000 });
      await lease.charge("u", 1, { spender: "bob" }); // learns the account has limits, opens bob's lease
      const s = lease.openMeter("u", { estimate: 20, spender: "bob" });
      expect(s).not.toBeNull();
      s!.recordUsage({ amount: 15, model: "m" });
      expect((await s!.commit()).leased).toBe(true);
      // Alice has no lease yet: the store's hold, as without a lease.
      expect(lease.openMeter("u", { estimate: 20, spender: "alice" })).toBeNull();
      await lease.close();
      expect((await m.credits.getLimits("u"))[0]).toMatchObject({ used: 16 });
      const settle = (await m.credits.getCreditHistory("u", { limit: 20 })).items.find(
        (e) => e.type === "commit_reserved" && e.amount === 16,
      );
      expect(settle?.spender).toBe("bob");
    } finally {
      await m.close();
    }
  });

  it("on an account without limits or scoped grants, charges naming spenders share one block (as before)", async () => {
    const m = await manager();
    try {
      await m.credits.addCredits("u", 100_000);
      const lease = m.credits.leases({ size: 1000, settleEveryMs: 30_000 });
      await lease.charge("u", 1, { spender: "a" });
      await lease.charge("u", 1, { spender: "b" });
      await lease.charge("u", 1, { feature: "x" });
      expect(lease.size).toBe(1);
      await lease.close();
    } finally {
      await m.close();
    }
  });
});

function lease2(m: Awaited<ReturnType<typeof manager>>) {
  return m.credits.leases({ size: 100, settleEveryMs: 30_000 });
}

describe("a named lease's process killed between charge and settle", () => {
  const dir = mkdtempSync(join(tmpdir(), "cm-lease-limits-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("is recovered after its hold lapsed as an after-service charge under its spender, counted toward its limit", async () => {
    const env = {
      LEASE_DB: join(dir, "crash.db"),
      LEASE_LEDGER: join(dir, "crash.jsonl"),
      LEASE_SPENDER: "bob",
      LEASE_LIMIT: "5000",
    };
    const child = join(import.meta.dirname, "fixtures", "lease-crash.ts");
    const died = await runProcess(child, { ...env, LEASE_MODE: "crash", LEASE_TTL: "1" }).catch((e: Error) => e);
    expect(died).toBeInstanceOf(Error);
    await sleep(1200);
    const out = await runProcess<Record<string, unknown>>(child, { ...env, LEASE_MODE: "recover" });
    // The lapsed hold gave its count back; the recovered window counts again, under bob.
    expect(out).toEqual({ recovered: 100, again: 0, balance: 10_000 - 100, reserved: 0, used: 100, spenders: ["bob"] });
  }, 60_000);
});
