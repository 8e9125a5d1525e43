import type { MemoryBoundPart } from "../../core/db/module-part.js";
import type { PeriodClose, PeriodCloseMark } from "./model.js";
import type { PeriodCloseStore, RevenueSummaryReads } from "./store.js";
import { closeGoesBack } from "./store-errors.js";

/** The revenue module's part of the in-memory store (`revenueStorePart.memory`): the closed periods, no summary. */
export function revenueMemoryPart(): MemoryBoundPart<RevenueSummaryReads> {
  return { reads: new MemoryPeriodCloses() };
}

/**
 * Closed periods in memory. A close reads the accounts' seqs first, then records its marks and its
 * row at once (synchronously: a reader sees it with all its marks), after checking again that it
 * is after the latest (of two racing closes, the second is refused).
 */
class MemoryPeriodCloses implements PeriodCloseStore {
  private readonly closes: PeriodClose[] = [];
  private readonly byUser = new Map<string, PeriodCloseMark[]>();

  private refuse(through: Date): void {
    const latest = this.closes[this.closes.length - 1];
    if (latest !== undefined && through.getTime() <= latest.through.getTime())
      throw closeGoesBack("memory", through, latest.through);
  }

  async recordClose(
    through: Date,
    closedAt: Date,
    accounts: () => AsyncIterable<{ userId: string; seq: number }>,
  ): Promise<PeriodClose> {
    this.refuse(through);
    const seqs: { userId: string; seq: number }[] = [];
    for await (const a of accounts()) seqs.push({ userId: a.userId, seq: a.seq });
    this.refuse(through);
    for (const { userId, seq } of seqs) {
      let mine = this.byUser.get(userId);
      if (mine === undefined) this.byUser.set(userId, (mine = []));
      mine.push({ through: new Date(through), userId, seq });
    }
    const close = { through: new Date(through), closedAt: new Date(closedAt), accounts: seqs.length };
    this.closes.push(close);
    return { ...close };
  }

  async listCloses(): Promise<PeriodClose[]> {
    return this.closes.map((c) => ({ ...c, through: new Date(c.through), closedAt: new Date(c.closedAt) }));
  }

  async marks(userIds: readonly string[] | null): Promise<PeriodCloseMark[]> {
    const ids = userIds ?? [...this.byUser.keys()];
    return ids.flatMap((u) => (this.byUser.get(u) ?? []).map((m) => ({ ...m, through: new Date(m.through) })));
  }
}
