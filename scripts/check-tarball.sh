#!/usr/bin/env bash
# The package as a user gets it: packs this checkout, installs the tarball into a fresh project
# outside the repository (with the optional peers it needs, from npm's cache when they are there),
# then imports every subpath with ESM `import` and CJS `require`, type-checks a strict TypeScript
# consumer under moduleResolution node16 and bundler, and runs the README's quick start. (Every
# TypeScript block of the README and docs/ is checked by scripts/check-docs.mjs, npm run check:docs.)
# Fails loudly at the first problem. Run after a build (CI: the one npm install runs, `prepare`).
set -euo pipefail
SECONDS=0
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/cm-tarball-XXXXXX")"
trap 'rm -rf "$work"' EXIT

tarball="$(cd "$repo" && npm pack --silent --ignore-scripts --pack-destination "$work" | tail -n 1)"
echo "Node.js $(node -v), npm $(npm -v)"
echo "packed $tarball ($(du -k "$work/$tarball" | cut -f1) KB)"
tsver="$(node -p "require('$repo/node_modules/typescript/package.json').version")"
pgver="$(node -p "require('$repo/node_modules/pg/package.json').version")"
mongover="$(node -p "require('$repo/node_modules/mongodb/package.json').version")"
ioredisver="$(node -p "require('$repo/node_modules/ioredis/package.json').version")"
fcver="$(node -p "require('$repo/node_modules/fast-check/package.json').version")"
expressver="$(node -p "require('$repo/node_modules/express/package.json').version")"
typesexpressver="$(node -p "require('$repo/node_modules/@types/express/package.json').version")"
natsjsver="$(node -p "require('$repo/node_modules/@nats-io/jetstream/package.json').version")"
natstransportver="$(node -p "require('$repo/node_modules/@nats-io/transport-node/package.json').version")"
sqlitever="$(node -p "require('$repo/node_modules/better-sqlite3/package.json').version")"
otelver="$(node -p "require('$repo/node_modules/@opentelemetry/api/package.json').version")"

cd "$work"
cat > package.json <<JSON
{ "name": "consumer", "private": true, "type": "module" }
JSON
npm install --no-audit --no-fund --prefer-offline --silent "./$tarball" "typescript@$tsver" "pg@$pgver" "mongodb@$mongover" "ioredis@$ioredisver" "fast-check@$fcver" "express@$expressver" "@types/express@$typesexpressver" "@nats-io/jetstream@$natsjsver" "@nats-io/transport-node@$natstransportver" "@opentelemetry/api@$otelver" @types/node@20
# better-sqlite3, the SQLite store's peer: its native addon compiles from source here (no prebuilt
# binary is reachable), which takes minutes, so the package is installed without its install script
# and given the addon the repository's own install built (same version, same machine). Or, on
# another Node.js (CI's Node 22 and 24 checks: .ci/runtimes/check.sh), the version named by
# CM_BETTER_SQLITE3_VERSION, which must ship its binary (13 and later: Node-API prebuilds inside,
# so its install script, a node-gyp build, is not run).
if [ -n "${CM_BETTER_SQLITE3_VERSION:-}" ]; then
  npm install --no-audit --no-fund --prefer-offline --silent --ignore-scripts "better-sqlite3@$CM_BETTER_SQLITE3_VERSION"
else
  npm install --no-audit --no-fund --prefer-offline --silent --ignore-scripts "better-sqlite3@$sqlitever"
  cp -R "$repo/node_modules/better-sqlite3/build" node_modules/better-sqlite3/
fi
echo "better-sqlite3 $(node -p "require('better-sqlite3/package.json').version")"

# Every subpath, the testing suite too (it takes its runner's functions, so it loads without vitest).
subpaths="credit-management credit-management/postgres credit-management/mongodb credit-management/sqlite credit-management/redis credit-management/nats credit-management/webhooks credit-management/http credit-management/models credit-management/store credit-management/schema credit-management/testing credit-management/otel credit-management/console credit-management/ai credit-management/worker"

# ESM: every subpath loads and exports something.
for p in $subpaths; do
  node --input-type=module -e "const m = await import('$p'); if (Object.keys(m).length === 0) throw new Error('$p exports nothing');"
done
echo "ESM: every subpath imports"
# CJS: the same through require.
for p in $subpaths; do
  node -e "const m = require('$p'); if (Object.keys(m).length === 0) throw new Error('$p exports nothing');"
done
echo "CJS: every subpath requires"

# The SQLite store with its peer, from ESM and CJS: a file, WAL, a unit of work, read back.
node --input-type=module -e "
const { createCreditManager } = await import('credit-management');
const { SqliteDbManager } = await import('credit-management/sqlite');
const manager = await createCreditManager({ db: new SqliteDbManager({ filename: 'esm.db' }) });
await manager.credits.addCredits('u', 5);
if ((await manager.credits.getUserCreditsInfo('u')).balance !== 5) throw new Error('sqlite (ESM): wrong balance');
await manager.close();
"
node -e "
const { CreditService } = require('credit-management');
const { SqliteDbManager } = require('credit-management/sqlite');
(async () => {
  const db = new SqliteDbManager({ filename: 'cjs.db' });
  await db.init();
  const credits = new CreditService({ db });
  await credits.addCredits('u', 7);
  if ((await credits.getUserCreditsInfo('u')).balance !== 7) throw new Error('sqlite (CJS): wrong balance');
  await db.close();
})().catch((e) => { console.error(e); process.exit(1); });
"
echo "SQLite: the store runs with its peer (ESM and CJS)"

# The contract suite under another runner than vitest: from CommonJS, with test functions of its
# own, it registers its suites and tests through them.
node -e '
const { InMemoryDbManager } = require("credit-management");
const { runDbManagerContract } = require("credit-management/testing");
const tests = [];
const test = { describe: (name, body) => body(), it: (name) => tests.push(name), beforeAll() {}, afterAll() {}, expect: Object.assign(() => { throw new Error("no test runs here"); }, { any: () => null }) };
runDbManagerContract({ name: "tarball", create: async () => new InMemoryDbManager(), test });
if (tests.length < 50) throw new Error(`the contract suite registered ${tests.length} tests`);
console.log(`testing: the contract suite registers ${tests.length} tests through a runner of its caller (CJS)`);
'

# A strict TypeScript consumer (no @types/pg), under both resolutions.
cat > consumer.ts <<'TS'
import { createCreditManager, InsufficientCreditsError } from "credit-management";
import { PostgresDbManager } from "credit-management/postgres";
import { MongoDbManager } from "credit-management/mongodb";
import { SqliteDbManager } from "credit-management/sqlite";
import { RedisCache } from "credit-management/redis";
import { NatsJetStreamQueue, consumeCreditEvents } from "credit-management/nats";
import { createCreditHandler, fastifyCreditMetering } from "credit-management/http";
import { runDbManagerContract } from "credit-management/testing";
import { DomainEvent, type JournalEntry } from "credit-management/models";
import { accountColumn, createCreditManager as createCoreManager, subscriptionsPart, type CreditModule } from "credit-management/core";
import * as z from "zod/mini";
import { compareGrants, defineStore, type DbManager } from "credit-management/store";
import { generateSql } from "credit-management/schema";
import { instrumentCreditManagement } from "credit-management/otel";
import { createConsoleHandler } from "credit-management/console";

export async function main(): Promise<JournalEntry> {
  const manager = await createCreditManager();
  const handler = createCreditHandler(manager, { authenticate: () => ({ userId: "u" }) });
  void handler;
  void createConsoleHandler(manager, { authorize: () => ({ role: "viewer", actor: "a" }) }).basePaths;
  void fastifyCreditMetering;
  void runDbManagerContract;
  instrumentCreditManagement({ manager }).shutdown();
  const health = await manager.health({ timeoutMs: 1000 });
  void health.status;
  const store: DbManager = manager.db;
  void [store, compareGrants, defineStore, generateSql("postgres" === "postgres" ? { dialect: "postgres" } : { dialect: "mysql" }), DomainEvent.safeParse({}).success];
  const modules: CreditModule[] = [{ id: "referrals", grantSources: ["referral"], accountColumn: accountColumn("referrals", z.number()) }];
  void modules;
  // The core's manager carries the service of each part it is given, and no other.
  const core = await createCoreManager({ parts: { subscriptions: subscriptionsPart() } });
  void core.subscriptions.listPlans;
  // @ts-expect-error: the notifications part was not given
  void core.notifications;
  const classes: unknown[] = [PostgresDbManager, MongoDbManager, SqliteDbManager, RedisCache, NatsJetStreamQueue, consumeCreditEvents, InsufficientCreditsError];
  void classes;
  return manager.credits.addCredits("u", 1);
}
TS
# Once per run: tsc's answer does not depend on the Node.js that runs it, so the other Node.js
# lines' checks (CM_BETTER_SQLITE3_VERSION set) would only repeat it.
if [ -z "${CM_BETTER_SQLITE3_VERSION:-}" ]; then
  for resolution in node16 bundler; do
    module=$([ "$resolution" = node16 ] && echo node16 || echo esnext)
    npx tsc --noEmit --strict --skipLibCheck false --types node --module "$module" --moduleResolution "$resolution" --target es2022 consumer.ts
    echo "TypeScript: a strict consumer type-checks (moduleResolution $resolution)"
  done
fi

# The README's quick start, as a user would run it.
node - "$repo/README.md" > quickstart.mjs <<'JS'
const text = require("node:fs").readFileSync(process.argv[2], "utf8");
const block = /## Quick start\n[\s\S]*?```ts\n([\s\S]*?)```/.exec(text);
if (!block) throw new Error("README has no Quick start block");
process.stdout.write(block[1].replace("logs/credit_ledger.jsonl", "logs/quickstart.jsonl"));
JS
out="$(node quickstart.mjs)"
echo "$out" | grep -q "available: 527" || { echo "quick start printed:"; echo "$out"; exit 1; }
echo "README quick start runs"
# What the quick start weighs in a user's bundle (esbuild, minified, for Node): the core entry is
# meant to stay small (docs/modules.md, "Parts of the core": a manager given no parts bundles none of
# them); over 231,342 bytes fails, naming the size. The core's files import each model from its own
# file, not the models' barrel, which put schemas the core never parses in its chunks.
# Once per run: the other Node.js lines' checks (CM_BETTER_SQLITE3_VERSION set) bundle the same files.
if [ -z "${CM_BETTER_SQLITE3_VERSION:-}" ]; then
  "$repo/node_modules/.bin/esbuild" quickstart.mjs --bundle --minify --platform=node --format=esm --outfile=quickstart.bundle.mjs --log-level=error
  bytes=$(wc -c < quickstart.bundle.mjs)
  echo "README quick start bundles to $((bytes / 1024)) KB, $bytes bytes (esbuild --bundle --minify --platform=node)"
  [ "$bytes" -le 231342 ] || { echo "the quick start's bundle is over 231,342 bytes ($bytes)" >&2; exit 1; }
fi
echo "tarball check: ok (${SECONDS} s)"
