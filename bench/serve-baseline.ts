/**
 * The baseline of bench/serve.ts: the same credit handler on the same kind of store (a SQLite file
 * in WAL mode), mounted by hand in node:http with a trivial `authenticate` (every caller admin).
 * Prints `port N` once listening; SIGTERM ends it.
 */
import { createServer } from "node:http";
import { createCreditManager } from "../src/manager.js";
import { createCreditHandler } from "../src/http/handler.js";
import { toNodeHandler } from "../src/http/node.js";
import { openStores } from "../src/serve/store.js";

const { db, keys } = await openStores({ kind: "sqlite", path: process.argv[2] as string }, {});
const manager = await createCreditManager({ db });
const handler = createCreditHandler(manager, { authenticate: () => ({ userId: "bench-admin", admin: true }) });
const node = toNodeHandler(handler);
const server = createServer((req, res) => void node(req, res));
server.keepAliveTimeout = 65_000;
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  console.log(`port ${typeof address === "object" && address !== null ? address.port : 0}`);
});
process.on("SIGTERM", () => {
  server.close(() => void Promise.all([manager.close(), keys.close()]).then(() => process.exit(0)));
  server.closeAllConnections();
});
