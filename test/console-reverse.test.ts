/** "Give back" on the console's journal, without a browser (docs/console.md, "Actions"; docs/corrections.md). */
import { describe, expect, it } from "vitest";
import { createConsoleHandler } from "../src/console/index.js";
import { createCreditManager } from "../src/index.js";

async function setup(role: "admin" | "viewer" = "admin") {
  const m = await createCreditManager();
  await m.credits.addCredits("acme", 1_000);
  const charge = await m.credits.deductCredits("acme", 120, { feature: "render", spender: "key-ci" });
  const h = createConsoleHandler(m, { authorize: () => ({ role, actor: "ops@example.com" }) });
  const page = await h(new Request("http://x/console/accounts/acme"));
  const cookie = (page.headers.get("set-cookie") ?? "").split(";")[0] as string;
  const html = await page.text();
  const token = encodeURIComponent(/name="_csrf" value="([^"]+)"/.exec(html)?.[1] ?? "");
  const send = (body: string) =>
    h(
      new Request("http://x/console/actions/reverse", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", cookie },
        body: `user=acme&entry=${charge.id}&_csrf=${token}&${body}`,
      }),
    );
  return { m, h, charge, html, send };
}

describe("giving a charge back in the console", () => {
  it("offers Give back on charges only, to admins only", async () => {
    const { html, charge } = await setup();
    const forms = html.match(/<form[^>]*action="\/console\/actions\/reverse"/g) ?? [];
    expect(forms).toHaveLength(1); // the deduction; not the addition
    expect(html).toMatch(new RegExp(`name="entry" value="${charge.id}"`));
    expect((await setup("viewer")).html).not.toContain("/actions/reverse");
  });

  it("asks the amount (default: what is left) and a reason, confirms exactly that, gives back once per form", async () => {
    const { m, h, charge, send } = await setup();
    // The charge's page: its figures, the amount defaulted to all that is left, a required reason.
    const form = await (await send("_key=dddddddd-0001")).text();
    expect(form).toContain("Give back a charge");
    expect(form).toMatch(/id="reverse-remaining">120 credits</);
    expect(form).toMatch(/name="amount"[^>]*max="120"/);
    expect(form).toMatch(/name="amount"[^>]*value="120"/);
    expect(form).toMatch(/name="description"[^>]*required/);
    expect(form).not.toContain('id="confirm"');

    // Review without a reason, or with more than is left: the form again, saying what is wrong.
    const noReason = await (await send("_key=dddddddd-0001&step=review&amount=50&description=")).text();
    expect(noReason).toContain("Reason: say why");
    expect(noReason).not.toContain('id="confirm"');
    const tooMuch = await (await send("_key=dddddddd-0001&step=review&amount=121&description=x")).text();
    expect(tooMuch).toContain("a whole number from 1 to 120");

    // A good review: the confirmation of exactly what will be recorded; still nothing changed.
    const confirm = await (await send("_key=dddddddd-0001&step=review&amount=50&description=job+failed")).text();
    expect(confirm).toContain('id="confirm"');
    expect(confirm).toMatch(/id="reverse-amount">50 credits</);
    expect(confirm).toContain("70 credits will be left to give back");
    expect(confirm).toContain("job failed (by ops@example.com in the console)");
    expect((await m.credits.getReversals("acme", charge.id)).reversed).toBe(0);
    // "Change": the form again, with the amount and the reason as they were.
    const change = await (await send("_key=dddddddd-0001&step=edit&amount=50&description=job+failed")).text();
    expect(change).toMatch(/name="amount"[^>]*value="50"/);
    expect(change).toMatch(/name="description"[^>]*value="job failed"/);
    expect(change).not.toContain('id="confirm"');

    // Confirmed, twice at once (a double click): one reversal.
    const done = await Promise.all([
      send("_key=dddddddd-0001&amount=50&description=job+failed&confirmed=1"),
      send("_key=dddddddd-0001&amount=50&description=job+failed&confirmed=1"),
    ]);
    expect(done.map((r) => r.status)).toEqual([303, 303]);
    const r = await m.credits.getReversals("acme", charge.id);
    expect([r.reversed, r.remaining, r.reversals.length]).toEqual([50, 70, 1]);
    expect(r.reversals[0]).toMatchObject({
      description: "job failed (by ops@example.com in the console)",
      metadata: expect.objectContaining({ actor: "ops@example.com", via: "console" }),
    });
    const location = done[0]?.headers.get("location") as string;
    expect(location).toBe(`/console/accounts/acme?charge=${charge.id}&reversal=${r.reversals[0]?.id}&notice=reversed`);

    // The result, read from the store; the journal links the reversal and its charge.
    const after = await (await h(new Request(`http://x${location}`))).text();
    expect(after.replace(/\s+/g, " ")).toContain(
      'id="reverse-result"> Gave back 50 credits of charge #2 (entry #3): 50 of 120 given back in all, 70 credits left to give back.',
    );
    expect(after).toMatch(new RegExp(`gives back <a href="#entry-${charge.id}">#2</a>`));
    expect(after).toMatch(/given back 50 in\s*<a href="#entry-[^"]+">#3<\/a>/);
  });

  it("reviews and confirms a reason by one rule: what the review accepts, the confirmation records", async () => {
    const { m, charge, send } = await setup();
    // The journal keeps 1,000 characters, the actor's note included: 990 typed are too many.
    const suffix = " (by ops@example.com in the console)".length;
    const max = 1000 - suffix;
    const form = await (await send("_key=dddddddd-0004")).text();
    expect(form).toMatch(new RegExp(`name="description"[^>]*maxlength="${max}"`));
    for (const reason of ["x".repeat(990), "x".repeat(max + 1), "   "]) {
      const review = await (await send(`_key=dddddddd-0004&step=review&amount=5&description=${reason}`)).text();
      expect(review, `${reason.length} characters`).not.toContain('id="confirm"');
      expect(review).toMatch(/Reason: (at most|say why)/);
      const confirmed = await send(`_key=dddddddd-0004&amount=5&description=${reason}&confirmed=1`);
      expect(confirmed.status).toBe(400);
    }
    expect((await m.credits.getReversals("acme", charge.id)).reversed).toBe(0);
    // The longest the form allows is reviewed, confirmed and recorded whole.
    const longest = "y".repeat(max);
    const review = await (await send(`_key=dddddddd-0005&step=review&amount=5&description=${longest}`)).text();
    expect(review).toContain('id="confirm"');
    expect((await send(`_key=dddddddd-0005&amount=5&description=${longest}&confirmed=1`)).status).toBe(303);
    const r = await m.credits.getReversals("acme", charge.id);
    expect(r.reversals[0]?.description).toBe(`${longest} (by ops@example.com in the console)`);
  });

  it("says when nothing is left, and refuses a confirmation past what is left (another give-back came first)", async () => {
    const { m, charge, send } = await setup();
    await m.credits.reverseCharge("acme", charge.id, { amount: 100, reason: "by the API" });
    const late = await send("_key=dddddddd-0002&amount=50&description=late&confirmed=1");
    expect(late.status).toBe(422);
    expect(await late.text()).toContain("Refused");
    expect((await m.credits.getReversals("acme", charge.id)).reversed).toBe(100);
    await m.credits.reverseCharge("acme", charge.id, { reason: "the rest" });
    const none = await (await send("_key=dddddddd-0003")).text();
    expect(none).toContain("nothing is left");
    expect(none).not.toContain('name="amount"');
  });

  it("refuses a form without its CSRF token, and a viewer", async () => {
    const { m, h, charge } = await setup();
    const post = (headers: Record<string, string>) =>
      h(
        new Request("http://x/console/actions/reverse", {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
          body: `user=acme&entry=${charge.id}&amount=5&description=x&confirmed=1&_key=eeeeeeee-0001`,
        }),
      );
    expect((await post({})).status).toBe(403);
    expect((await m.credits.getReversals("acme", charge.id)).reversed).toBe(0);
    const viewer = await setup("viewer");
    expect((await viewer.send("_key=eeeeeeee-0002&amount=5&description=x&confirmed=1")).status).toBe(403);
    expect((await viewer.m.credits.getReversals("acme", viewer.charge.id)).reversed).toBe(0);
  });
});
