import { describe, expect, it } from "vitest";
import { ConfigurationError, ValidationError, createCreditManager } from "../src/index.js";

describe("createCreditManager({ trial })", () => {
  it("grants the trial to a user's new account once, through every service's units of work", async () => {
    const m = await createCreditManager({ trial: { amount: 50, expiresInDays: 7, description: "welcome" } });
    await m.credits.deductCredits("merchant-1", 20);
    await m.credits.addCredits("merchant-1", 5);
    expect(await m.credits.getUserCreditsInfo("merchant-1")).toMatchObject({ balance: 35 });
    const grants = await m.credits.getGrants("merchant-1");
    expect(grants.filter((g) => g.source === "trial")).toHaveLength(1);
    await m.close();
  });

  it("credits.openAccount creates the account with its trial once; an existing account is left as it is", async () => {
    const m = await createCreditManager({ trial: { amount: 50 } });
    expect(await m.credits.openAccount("merchant-2")).toMatchObject({ balance: 50, available: 50 });
    expect(await m.credits.openAccount("merchant-2")).toMatchObject({ balance: 50 }); // a redelivered "created" event
    await m.credits.deductCredits("merchant-2", 50);
    expect(await m.credits.openAccount("merchant-2")).toMatchObject({ balance: 0 }); // at zero: no second trial
    expect((await m.credits.getCreditHistory("merchant-2")).items.map((e) => e.type)).toEqual(["deduct", "add"]);
    await expect(m.credits.openAccount("")).rejects.toBeInstanceOf(ValidationError);
    await m.close();
    const plain = await createCreditManager();
    expect(await plain.credits.openAccount("nobody")).toMatchObject({ balance: 0 }); // no trial: nothing to write
    expect(await plain.db.getAccount("nobody")).toBeNull();
    await plain.close();
  });

  it("refuses an invalid trial option", async () => {
    await expect(createCreditManager({ trial: { amount: -1 } })).rejects.toBeInstanceOf(ConfigurationError);
  });
});
