/**
 * An AI-style endpoint on Express, metered per request:   npx tsx examples/express-middleware.ts
 *
 * - POST /api/chat holds an estimate (X-Estimated-Credits, default 100, capped at 4,000), runs the
 *   handler, which records what the "model" really used, and commits that; X-Credits-Deducted says it.
 * - The credit API (balance, history, reservations, admin routes, /credits/openapi.json) is mounted
 *   with toNodeHandler.
 * Identity: `Authorization: Bearer <userId>` (a stand-in for your session, API key or JWT check);
 * the token `admin` is an admin. With no PORT set it runs a short demo against itself and exits.
 */
import type { AddressInfo } from "node:net";
import express from "express";
import { createCreditManager, recordUsage } from "credit-management";
import { createCreditHandler, creditMeteringMiddleware, toNodeHandler, type Identity } from "credit-management/http";

const manager = await createCreditManager();
await manager.credits.addCredits("user-1", 1_000, { description: "welcome credits" });

/** Your auth goes here. Never trust a client-sent user id. */
const identify = (authorization: string | undefined | null): Identity | null => {
  const token = authorization?.replace(/^Bearer /, "");
  if (!token) return null;
  return token === "admin" ? { userId: "admin", admin: true } : { userId: token };
};

/** Pretend model: "uses" one credit per 4 characters of prompt plus 20 for the answer. */
async function callModel(prompt: string) {
  await new Promise((r) => setTimeout(r, 20));
  const tokens = Math.ceil(prompt.length / 4) + 20;
  recordUsage({ amount: tokens, model: "tiny-1", provider: "example", metadata: { promptChars: prompt.length } });
  return { text: `You said: ${prompt}`, tokens };
}

const app = express();
app.use(
  toNodeHandler(
    createCreditHandler(manager, { authenticate: (request) => identify(request.headers.get("authorization")) }),
  ),
);
app.use(
  creditMeteringMiddleware({
    credits: manager.credits,
    authenticate: (req) => identify(req.headers.authorization),
    pathPrefix: "/api",
    skipPaths: ["/api/health"],
    defaultEstimate: 100,
    maxEstimate: 4_000,
    ttlSeconds: 120,
    onSettled: (o) => console.log(`  [meter] ${o.userId}: held ${o.estimate}, ${o.outcome} ${o.charged}`),
  }),
);
app.use(express.json());
app.get("/api/health", (_req, res) => void res.json({ ok: true }));
app.post("/api/chat", async (req, res) => {
  const { text, tokens } = await callModel(String(req.body?.prompt ?? ""));
  res.json({ text, usage: { total_tokens: tokens } });
});

const server = app.listen(Number(process.env.PORT ?? 0), "127.0.0.1", async () => {
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  console.log(`listening on ${base}`);
  if (process.env.PORT) return;
  const auth = { authorization: "Bearer user-1" };
  const chat = await fetch(`${base}/api/chat`, {
    method: "POST",
    headers: { ...auth, "content-type": "application/json", "x-estimated-credits": "200" },
    body: JSON.stringify({ prompt: "How many credits does this cost?" }),
  });
  console.log(
    "POST /api/chat",
    chat.status,
    "X-Credits-Deducted:",
    chat.headers.get("x-credits-deducted"),
    await chat.json(),
  );
  console.log("GET /credits/balance", await (await fetch(`${base}/credits/balance`, { headers: auth })).json());
  const poor = await fetch(`${base}/api/chat`, { method: "POST", headers: { authorization: "Bearer user-2" } });
  console.log("user-2 (no credits):", poor.status, await poor.json());
  server.close();
  await manager.close();
});
