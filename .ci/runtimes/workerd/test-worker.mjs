// The Worker CI runs in workerd (.ci/runtimes/check.sh workerd): examples/cloudflare-worker.ts as
// it is, plus one route of the check's own, /__refusals, which makes what cannot work on Workers
// (docs/runtimes.md) and answers the errors: each must be refused when it is made.
import { createCreditManager, InMemoryDbManager } from "credit-management";
import { SqliteDbManager } from "credit-management/sqlite";
import example from "./cloudflare-worker.ts";

const refusal = async (make) => {
  try {
    await make();
    return "not refused";
  } catch (error) {
    return `${error.constructor.name} (${error.code}): ${error.message}`;
  }
};

export default {
  async fetch(request, env, ctx) {
    if (new URL(request.url).pathname !== "/__refusals") return example.fetch(request, env, ctx);
    return Response.json({
      sqlite: await refusal(() => new SqliteDbManager({ filename: "credits.db" })),
      ledgerFile: await refusal(() =>
        createCreditManager({ db: new InMemoryDbManager(), ledger: { filePath: "ledger.jsonl" } }),
      ),
    });
  },
};
