/**
 * A client of `credit-management serve` generated from its OpenAPI document (docs/service.md,
 * "Clients in other languages"): `openapi-typescript` turns the document into the types in
 * ./credit-api.d.ts and `openapi-fetch` calls the service through them. A Python or Go team does
 * the same with its own generator from `GET /credits/openapi.json`.
 *
 *   npx openapi-typescript http://localhost:8080/credits/openapi.json -o credit-api.d.ts
 *   CREDIT_SERVICE_URL=http://localhost:8080 ADMIN_KEY=cmk_… USER_KEY=cmk_… tsx examples/service-client.ts
 *
 * USER_KEY must be a key of the user `alice` (`credit-management keys create --role user:alice`).
 */
import createClient from "openapi-fetch";
import type { paths } from "./credit-api.js";

const baseUrl = process.env.CREDIT_SERVICE_URL ?? "http://localhost:8080";
const bearer = (key: string | undefined) => ({ authorization: `Bearer ${key ?? ""}` });

const admin = createClient<paths>({ baseUrl, headers: bearer(process.env.ADMIN_KEY) });
const alice = createClient<paths>({ baseUrl, headers: bearer(process.env.USER_KEY) });

const added = await admin.POST("/admin/credits/users/{userId}/add", {
  params: { path: { userId: "alice" } },
  body: { amount: 100, description: "welcome credits" },
});
if (added.error) throw new Error(`add: ${added.error.error.code}`);
console.log(`added: ${added.data.amount}, balance ${added.data.balanceAfter}`);

const hold = await alice.POST("/credits/reservations", {
  body: { amount: 30 },
  headers: { "idempotency-key": `job-${Date.now()}` },
});
if (hold.error) throw new Error(`reserve: ${hold.error.error.code}`);
const committed = await alice.POST("/credits/reservations/{id}/commit", {
  params: { path: { id: hold.data.id } },
  body: { amount: 12 },
});
if (committed.error) throw new Error(`commit: ${committed.error.error.code}`);
console.log(`committed: 12 of a hold of ${hold.data.amount}`);

const forbidden = await alice.GET("/admin/credits/users/{userId}/balance", { params: { path: { userId: "bob" } } });
console.log(`alice reads bob: ${forbidden.response.status}`);

const { data: balance } = await alice.GET("/credits/balance");
console.log(`balance: ${balance?.balance}, available ${balance?.available}`);
