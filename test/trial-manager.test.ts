import { describe, expect, it } from "vitest";
import { ValidationError, createCreditManager } from "../src/index.js";

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

  it("refuses an invalid trial option", async () => {
    await expect(createCreditManager({ trial: { amount: -1 } })).rejects.toBeInstanceOf(ValidationError);
  });
});
