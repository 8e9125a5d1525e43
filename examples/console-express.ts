/**
 * The operator's console on Express:   npx tsx examples/console-express.ts   (PORT=3000 to keep it up)
 *
 * - GET /console: accounts, an account's balance chart, grants, holds and journal, subscriptions,
 *   payments, promos, the outbox, the jobs (docs/console.md).
 * - `authorize` decides per request: here a stand-in reads `Authorization: Bearer <token>` —
 *   "admin" may act, "support" may look, anyone else is refused. Use your session or SSO instead.
 * With no PORT set it runs a short demo against itself and exits: a viewer's page, a refused
 * stranger, and an admin's grant through the form, its confirmation and its CSRF token.
 */
import type { AddressInfo } from "node:net";
import express from "express";
import { createCreditManager } from "credit-management";
import { createConsoleHandler, toNodeHandler } from "credit-management/console";

const manager = await createCreditManager();
await manager.credits.addCredits("user-1", 1_000, { description: "welcome credits" });
await manager.credits.deductCredits("user-1", 42, { description: "chat completion" });

const consoleHandler = createConsoleHandler(manager, {
  authorize: (request) => {
    const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
    if (token === "admin") return { role: "admin", actor: "alice@example.com" };
    if (token === "support") return { role: "viewer", actor: "bob@example.com" };
    return "deny";
  },
  // basePath: "/console", csrfSecret: process.env.CONSOLE_CSRF_SECRET (the same on every process)
});

const app = express();
app.use(toNodeHandler(consoleHandler)); // other paths fall through to next()
app.get("/", (_req, res) => {
  res.send("your app");
});

const server = app.listen(Number(process.env.PORT ?? 0), "127.0.0.1");
await new Promise((resolve) => server.once("listening", resolve));
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/console`;
console.log(`console at ${base}`);

if (!process.env.PORT) {
  const as = (token: string, cookie = "") => ({ authorization: `Bearer ${token}`, cookie });
  const page = await fetch(`${base}/accounts/user-1`, { headers: as("support") });
  const html = await page.text();
  console.log(`support sees user-1: ${page.status}, balance ${/id="balance">(-?\d+)</.exec(html)?.[1]}`);
  console.log(`a stranger: ${(await fetch(`${base}/`)).status}`);

  // An admin grants 100 credits as the browser would: the page's form, then its confirmation.
  const admin = await fetch(`${base}/accounts/user-1`, { headers: as("admin") });
  const cookie = (admin.headers.get("set-cookie") ?? "").split(";")[0] as string;
  const form = await admin.text();
  const csrf = /name="_csrf" value="([^"]+)"/.exec(form)?.[1] ?? "";
  const key = /name="_key" value="([^"]+)"/.exec(form)?.[1] ?? "";
  const body = new URLSearchParams({ _csrf: csrf, _key: key, user: "user-1", amount: "100", description: "goodwill" });
  const post = (extra: Record<string, string>) =>
    fetch(`${base}/actions/grant`, {
      method: "POST",
      headers: { ...as("admin", cookie), "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams([...body, ...Object.entries(extra)]),
      redirect: "manual",
    });
  console.log(`grant, first step: ${(await post({})).status} (the confirmation page)`);
  const done = await post({ confirmed: "1" });
  console.log(`grant, confirmed: ${done.status} → ${done.headers.get("location")}`);
  console.log(`confirmed again (a double click): ${(await post({ confirmed: "1" })).status}`);
  const [entry] = (await manager.credits.getCreditHistory("user-1", { limit: 1 })).items;
  console.log(`balance: ${(await manager.credits.getUserCreditsInfo("user-1")).balance}; by ${entry?.metadata?.actor}`);
  server.close();
  await manager.close();
}
