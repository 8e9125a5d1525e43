// The customer's state per unit (docs/customer-state.md, docs/units.md): each unit's figures apart,
// each feature's figures in its rule's unit, grants with their unit; nothing adds two units.
import { describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager, InMemoryDbManager } from "../src/index.js";
import { testStores } from "./fixtures/stores.js";

const HOUR = 3_600_000;
const stores = [
  ...testStores("state_units"),
  {
    name: "sqlite",
    open: async () => {
      const db = new SqliteDbManager({ filename: ":memory:" });
      return { db, another: () => db, drop: async () => undefined };
    },
  },
];

describe.each(stores)("the customer's state per unit on $name", (store) => {
  it("answers each unit's figures apart and each feature in its own unit", async () => {
    const opened = await store.open();
    const t0 = Date.now();
    const m = await createCreditManager({
      db: opened.db,
      clock: () => new Date(t0),
      overdraftLimits: { images: 5 },
      features: { render: { minAvailable: 2, unit: "images" }, chat: { minAvailable: 1 } },
    });
    try {
      const { credits } = m;
      await credits.addCredits("acme", 1_000);
      await credits.addCredits("acme", 3, { unit: "images" });
      await credits.addCredits("acme", 40, { unit: "images", effectiveAt: new Date(t0 + HOUR) });
      await credits.deductCredits("acme", 100, { feature: "chat" });
      await credits.reserveCredits("acme", 1, { feature: "render" });

      const state = await credits.getCustomerState("acme");
      // The default unit's figures where they always are; images apart, never added to them.
      expect(state).toMatchObject({ balance: 900, reserved: 0, available: 900, debt: 0 });
      expect(state.units).toEqual({ images: { balance: 3, reserved: 1, available: 2, debt: 0 } });

      const render = state.features.find((f) => f.feature === "render");
      expect(render).toMatchObject({ unit: "images", granted: 3, used: 1, left: 2, allowed: true, limit: null });
      expect(render?.grants.map((g) => [g.unit, g.amount])).toEqual([["images", 3]]);
      const chat = state.features.find((f) => f.feature === "chat");
      expect(chat?.unit).toBeUndefined();
      expect(chat).toMatchObject({ granted: 1_000, used: 100, left: 900 });
      expect(chat?.grants.map((g) => g.unit ?? null)).toEqual([null]);
      // The upcoming grant carries its unit, in no figure.
      expect(state.upcoming.map((g) => [g.unit, g.amount])).toEqual([["images", 40]]);

      // Debt in images is that unit's (the hold keeps its 1): the render feature reads it, chat and `debt` do not.
      await credits.deductCreditsAfterService("acme", 6, { feature: "render" });
      const after = await credits.getCustomerState("acme");
      expect(after.debt).toBe(0);
      expect(after.units?.images).toEqual({ balance: -3, reserved: 1, available: -4, debt: 4 });
      expect(after.features.find((f) => f.feature === "render")).toMatchObject({
        unit: "images",
        left: -4,
        allowed: false,
        reason: "insufficient_credits",
      });
      expect(after.features.find((f) => f.feature === "chat")).toMatchObject({ left: 900, allowed: true });
      // `check` answers as the state does.
      expect((await credits.check("acme", { feature: "render" })).allowed).toBe(false);

      // An account that holds only the default unit has no `units`; its grants and chat carry none.
      await credits.addCredits("plain", 10);
      const plain = await credits.getCustomerState("plain");
      expect("units" in plain).toBe(false);
      const plainChat = plain.features.find((f) => f.feature === "chat");
      expect(plainChat && "unit" in plainChat).toBe(false);
      expect(plainChat?.grants.map((g) => "unit" in g)).toEqual([false]);
      expect((await credits.listCustomerStates({ userIds: ["acme", "plain"] })).items.map((s) => s.units)).toEqual([
        after.units,
        undefined,
      ]);
    } finally {
      await m.close();
      await opened.drop();
    }
  });
});

describe("the customer's state per unit over HTTP", () => {
  it("GET /credits/state carries the units, each feature's unit and each grant's", async () => {
    const { createCreditHandler } = await import("../src/http/index.js");
    const m = await createCreditManager({ features: { render: { minAvailable: 1, unit: "images" } } });
    try {
      await m.credits.addCredits("acme", 100);
      await m.credits.addCredits("acme", 5, { unit: "images" });
      const handler = createCreditHandler(m, { authenticate: () => ({ userId: "acme" }) });
      const res = await handler(new Request("http://localhost/credits/state"));
      expect(res.status).toBe(200);
      const body = (await res.json()) as {
        balance: number;
        units: unknown;
        features: { feature: string; unit?: string; grants: { unit?: string }[] }[];
      };
      expect(body.balance).toBe(100);
      expect(body.units).toEqual({ images: { balance: 5, reserved: 0, available: 5, debt: 0 } });
      const render = body.features.find((f) => f.feature === "render");
      expect([render?.unit, render?.grants.map((g) => g.unit)]).toEqual(["images", ["images"]]);
    } finally {
      await m.close();
    }
  });
});

describe("a period_spend alert with units", () => {
  it("its recount of the spend already made counts the default unit only", async () => {
    const m = await createCreditManager({ notifications: {} });
    try {
      await m.credits.addCredits("acme", 100);
      await m.credits.addCredits("acme", 50, { unit: "images" });
      await m.credits.deductCredits("acme", 7);
      await m.credits.deductCredits("acme", 30, { unit: "images" });
      // Set after the spends: the spend already made in its window is recounted from the usage.
      await m.notifications.setAlerts("acme", [{ id: "daily", kind: "period_spend", atOrAbove: 20, window: "day" }]);
      const alert = (await m.credits.getCustomerState("acme")).alerts.find((a) => a.threshold.id === "daily");
      expect(alert).toMatchObject({ state: "ok", value: 7 });
    } finally {
      await m.close();
    }
  });

  it("its recount finds the window's spend behind an entry a process with a slower clock wrote later", async () => {
    // Two processes over one store, the second's clock 5 s behind (docs/customer-state.md, "The guarantees"):
    // the account's entries are in seq order, not in time order, around the day's start.
    const db = new InMemoryDbManager();
    const DAY = 86_400_000;
    const dayStart = Math.ceil(Date.now() / DAY) * DAY;
    let t = dayStart - 10_000;
    const a = await createCreditManager({ db, notifications: {}, clock: () => new Date(t) });
    const b = await createCreditManager({ db, notifications: {}, clock: () => new Date(t - 5_000) });
    try {
      await a.credits.addCredits("acme", 100);
      await a.credits.addCredits("acme", 50, { unit: "images" });
      t = dayStart + 1_000;
      await a.credits.deductCredits("acme", 7); // today, by its writer's clock
      t = dayStart + 2_000;
      await b.credits.deductCredits("acme", 30); // written after, dated yesterday by its writer's clock
      await a.notifications.setAlerts("acme", [{ id: "daily", kind: "period_spend", atOrAbove: 20, window: "day" }]);
      const alert = (await a.credits.getCustomerState("acme")).alerts.find((x) => x.threshold.id === "daily");
      expect(alert).toMatchObject({ state: "ok", value: 7 });
    } finally {
      await a.close();
      await b.close();
    }
  });
});
