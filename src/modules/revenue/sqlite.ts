import type { PeriodClose, PeriodCloseMark } from "./model.js";
import type { Part } from "../../core/db/store/parts.js";
import type { SqliteBoundPart, SqliteStoreHost } from "../../db/sqlite/module-part.js";
import type { JournalEntry } from "../../core/models/index.js";
import { decodeRow } from "../../schema/codec.js";
import type { MovedEntriesQuery, RevenueSummaryReads } from "./store.js";
import { closeGoesBack } from "./store-errors.js";

/**
 * The revenue module's part of `SqliteDbManager` (`revenueStorePart.sqlite`): the closed periods
 * (tables `period_closes`, `period_close_marks`), no summary. A close is one write transaction: the
 * check against the latest close, every account's mark (`INSERT … SELECT` from the accounts), the
 * close row. Synchronous reads: the store runs them again while the file is locked. The entries
 * moved by a close (`movedEntries`) are one statement a page: the accounts in user id order, each
 * with its mark (LEFT JOIN: none for an account the close did not know), and each account's
 * entries past it by the journal's primary key (user_id, seq).
 */
export function revenueSqlitePart(s: SqliteStoreHost): SqliteBoundPart<RevenueSummaryReads> {
  return { reads: reads(s) as RevenueSummaryReads };
}

function reads(s: SqliteStoreHost): Part<Omit<RevenueSummaryReads, "summary">> {
  const t = s.t;
  return {
    recordClose: (through: Date, closedAt: Date): PeriodClose =>
      s.tx(() => {
        const latest = s.one<PeriodClose>("periodCloses", 'ORDER BY "through" DESC');
        if (latest !== null && through.getTime() <= latest.through.getTime())
          throw closeGoesBack("sqlite", through, latest.through);
        const accounts = s.run(
          `INSERT INTO ${t.periodCloseMarks.qualified} ("through", "user_id", "seq") SELECT ?, "user_id", "seq" FROM ${t.accounts.qualified}`,
          [through],
        );
        const close = { through, closedAt, accounts };
        s.insert("periodCloses", [close]);
        return close;
      }, true),
    listCloses: () => s.list<PeriodClose>("periodCloses", 'ORDER BY "through"'),
    marks: (userIds) => {
      if (userIds === null) return s.list<PeriodCloseMark>("periodCloseMarks", 'ORDER BY "user_id", "through"');
      const out: PeriodCloseMark[] = [];
      // In slices: a statement binds a bounded number of parameters.
      for (let i = 0; i < userIds.length; i += 500) {
        const ids = userIds.slice(i, i + 500);
        out.push(
          ...s.list<PeriodCloseMark>(
            "periodCloseMarks",
            `WHERE "user_id" IN (${ids.map(() => "?").join(", ")}) ORDER BY "user_id", "through"`,
            ids,
          ),
        );
      }
      return out;
    },
    movedEntries: (query: MovedEntriesQuery): JournalEntry[] => {
      const params: unknown[] = [query.through];
      let past = "";
      if (query.after !== null) {
        // The account of the last entry from past that entry; the next accounts from their marks.
        past = ` AND a."user_id" >= ? AND (a."user_id" > ? OR j."seq" > ?)`;
        params.push(query.after.userId, query.after.userId, query.after.seq);
      }
      params.push(...query.types, query.before, query.limit);
      return s
        .all(
          `SELECT j.* FROM ${t.accounts.qualified} a ` +
            `LEFT JOIN ${t.periodCloseMarks.qualified} m ON m."user_id" = a."user_id" AND m."through" = ? ` +
            `JOIN ${t.journal.qualified} j ON j."user_id" = a."user_id" AND j."seq" > coalesce(m."seq", 0)${past} ` +
            `AND j."type" IN (${query.types.map(() => "?").join(", ") || "NULL"}) ` +
            `AND coalesce(j."occurred_at", j."created_at") < ? ORDER BY a."user_id", j."seq" LIMIT ?`,
          params,
        )
        .map((r) => decodeRow<JournalEntry>(t.journal.columns, r));
    },
  };
}
