import { UserId } from "../../core/models/index.js";
import { allowedNetworks, openCreditStore, openEndpointStore } from "../../serve/store.js";
import { serveSettings, type Env } from "../../serve/settings.js";
import {
  endpointOf,
  endpointProblem,
  unknownType,
  newEndpoint,
  rotateSecret,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
} from "./store.js";
import { retryFailedWebhooks, sendTestWebhook } from "./queue.js";
import { publishedTypes } from "./serve.js";
import type { CliIo } from "../../cli/run.js";
import { UsageError } from "../../util/usage-error.js";
import { exitCodeOf, parseCommandLine } from "../../cli/args.js";
import { closeQuietly } from "../../cli/store.js";

/**
 * `credit-management webhooks add|list|remove|enable|disable|rotate-secret|test|retry`
 * (docs/notifications.md, "Webhooks"): the endpoints the worker (`CREDIT_WEBHOOKS=on`) delivers
 * to, kept in the store `serve` uses (the same variables and `--sqlite`).
 */
export const WEBHOOKS_HELP = `Usage: credit-management webhooks <command> [options]

The webhook endpoints the worker delivers every outbox event to (CREDIT_WEBHOOKS=on), signed as
Standard Webhooks. Docs: docs/notifications.md ("Webhooks"). The store: as "serve" (CREDIT_PG_URL,
CREDIT_MONGO_URI, CREDIT_SQLITE_PATH or --sqlite FILE).
  add URL [--types T1,T2] [--description TEXT] [--development]
                         Adds an endpoint (https:// only; --development allows http://) and prints
                         its id and secret (whsec_…): the receiver verifies with it
  list [--json]          The endpoints (without their secrets)
  remove ID              Removes one (its pending deliveries then fail)
  enable ID | disable ID Turns deliveries to it on or off (an endpoint that answered 410 is disabled)
  rotate-secret ID [--drop-old]
                         Prints a new secret; messages are signed with the new and the previous one
                         until --drop-old keeps only the newest
  test ID                Sends a signed test event (type webhook_test) and prints the answer
  retry ID --user USER [--event EVENT_ID]
                         Delivers the account's failed deliveries to the endpoint again
Environment: CREDIT_WEBHOOK_ALLOW_NETWORKS   CIDR networks endpoints may reach although private
  or loopback (comma-separated; default none).
`;

/** Runs `webhooks …`; resolves to the exit code (0 done, 1 failed, 2 bad usage, 3 better-sqlite3 missing). */
export async function runWebhooksCli(args: readonly string[], io: CliIo, env: Env): Promise<number> {
  try {
    const { values, positionals } = parseCommandLine(args, {
      types: { type: "string" },
      description: { type: "string" },
      development: { type: "boolean" },
      "drop-old": { type: "boolean" },
      user: { type: "string" },
      event: { type: "string" },
      sqlite: { type: "string" },
      json: { type: "boolean" },
    });
    const [sub, target, ...extra] = positionals;
    if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
    const settings = serveSettings({ sqlite: values.sqlite }, env);
    const withStore = async (fn: (store: WebhookEndpointStore) => Promise<number>): Promise<number> => {
      const store = await openEndpointStore(settings.store);
      try {
        await store.init();
        return await fn(store);
      } finally {
        await closeQuietly(() => store.close());
      }
    };
    const existing = async (store: WebhookEndpointStore): Promise<WebhookEndpointRecord> => {
      if (target === undefined) throw new UsageError(`webhooks ${sub} needs an endpoint id (webhooks list shows them)`);
      const record = await store.get(target);
      if (record === null) throw new Error(`no webhook endpoint ${target}`);
      return record;
    };
    switch (sub) {
      case "add": {
        if (target === undefined) throw new UsageError("webhooks add needs the endpoint's URL");
        const types = values.types === undefined ? null : values.types.split(",").map((t) => t.trim());
        const unknown = unknownType(types, publishedTypes());
        if (unknown !== null) throw new UsageError(`--types: "${unknown}" is not an event type (docs/events.md)`);
        const record = newEndpoint({
          url: target,
          types,
          development: values.development === true,
          description: values.description ?? null,
        });
        const problem = endpointProblem(record);
        if (problem !== null) throw new UsageError(problem);
        return await withStore(async (store) => {
          await store.put(record);
          io.stderr(
            `credit-management: webhook endpoint ${record.id} added; its secret is below (the receiver verifies with it)\n`,
          );
          io.stdout(
            values.json === true
              ? `${JSON.stringify({ id: record.id, secret: record.secrets[0] })}\n`
              : `${record.id} ${record.secrets[0]}\n`,
          );
          return 0;
        });
      }
      case "list":
        return await withStore(async (store) => {
          for (const r of await store.list()) {
            const { secrets, ...shown } = r;
            io.stdout(
              values.json === true
                ? `${JSON.stringify({ ...shown, secrets: secrets.length })}\n`
                : `${r.id}  ${r.url}  ${r.enabled ? "enabled" : `disabled (${r.disabledReason ?? "by hand"})`}  ${r.types?.join(",") ?? "all events"}${r.development ? "  development" : ""}\n`,
            );
          }
          return 0;
        });
      case "remove":
        return await withStore(async (store) => {
          await existing(store);
          await store.remove(target as string);
          io.stderr(`credit-management: webhook endpoint ${target} removed\n`);
          return 0;
        });
      case "enable":
      case "disable":
        return await withStore(async (store) => {
          const r = await existing(store);
          await store.put({ ...r, enabled: sub === "enable", disabledReason: sub === "enable" ? null : "by hand" });
          io.stderr(`credit-management: webhook endpoint ${r.id} ${sub}d\n`);
          return 0;
        });
      case "rotate-secret":
        return await withStore(async (store) => {
          const r = await existing(store);
          const dropOld = values["drop-old"] === true;
          const next = rotateSecret(r, dropOld);
          await store.put(next);
          if (dropOld) {
            io.stderr(`credit-management: webhook endpoint ${r.id}: signed with its newest secret only\n`);
            return 0;
          }
          io.stderr(
            `credit-management: webhook endpoint ${r.id}: new secret below; messages carry a signature for it and the previous one until rotate-secret --drop-old\n`,
          );
          io.stdout(`${next.secrets[0]}\n`);
          return 0;
        });
      case "test":
        return await withStore(async (store) => {
          const r = await existing(store);
          const result = await sendTestWebhook(endpointOf(r), { allowNetworks: allowedNetworks(env) });
          const ok = result.status >= 200 && result.status < 300;
          io.stdout(`${result.id}: ${r.url} answered ${result.status}${ok ? "" : ` ${result.body.slice(0, 200)}`}\n`);
          return ok ? 0 : 1;
        });
      case "retry": {
        if (target === undefined) throw new UsageError("webhooks retry needs an endpoint id");
        if (values.user === undefined || !UserId.safeParse(values.user).success)
          throw new UsageError("webhooks retry needs --user USER (the account whose deliveries failed)");
        const db = await openCreditStore(settings.store);
        try {
          await db.init();
          const n = await retryFailedWebhooks(db, target, values.user, values.event);
          io.stderr(
            `credit-management: ${n} failed deliver${n === 1 ? "y" : "ies"} to ${target} written again; the worker delivers them\n`,
          );
          return 0;
        } finally {
          await closeQuietly(() => db.close());
        }
      }
      default:
        throw new UsageError(
          `webhooks needs add, list, remove, enable, disable, rotate-secret, test or retry${sub === undefined ? "" : `, not "${sub}"`}`,
        );
    }
  } catch (error) {
    return exitCodeOf(error, io, "webhooks");
  }
}
