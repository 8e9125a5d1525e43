/**
 * The baseline of bench/serve.ts: the same credit handler on the same kind of store (a SQLite file
 * in WAL mode, as serve's default store opens it), mounted by hand in node:http with a trivial
 * `authenticate` (every caller admin). The package is loaded as bench/pkg.ts says (dist/, or src/
 * with BENCH_SOURCE=1), as serve is run (bench/serve-lib.ts). Prints `port N` once listening;
 * SIGTERM ends it.
 */
import { createServer } from "node:http";
import Database from "better-sqlite3";
import { core, http, sqlite } from "./pkg.js";

const { SqliteDbManager } = await sqlite();
const database = new Database(process.argv[2] as string);
database.pragma("journal_mode = WAL");
const manager = await core.createCreditManager({ db: new SqliteDbManager({ database }) });
const handler = http.createCreditHandler(manager, { authenticate: () => ({ userId: "bench-admin", admin: true }) });
const node = http.toNodeHandler(handler);
const server = createServer((req, res) => void node(req, res));
server.keepAliveTimeout = 65_000;
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  console.log(`port ${typeof address === "object" && address !== null ? address.port : 0}`);
});
process.on("SIGTERM", () => {
  server.close(
    () =>
      void manager.close().then(() => {
        database.close();
        process.exit(0);
      }),
  );
  server.closeAllConnections();
});
