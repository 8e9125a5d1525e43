import type { Changes } from "../../src/core/domain/state.js";
import type { JournalEntry } from "../../src/core/models/index.js";
import type { CreditModel } from "../../src/core/testing/model.js";
import type { CreditService } from "../../src/credit-service.js";

const DAY = 86_400_000;

/**
 * The figures derived from an account's journal, checked against the journal itself (docs/usage.md,
 * "Late usage" and "Corrections"; docs/revenue.md): what the usage report answers by UTC day,
 * feature and spender equals the journal's charges less its reversals, each on the day its usage
 * happened (`occurredAt`, else `createdAt`) — summed here from the entries' types and amounts, not
 * by the usage rules; and the revenue report rolls forward window by window (deferred at a
 * window's start plus what was paid, less what was recognized, broken and refunded, is deferred at
 * its end; each window starts where the last ended) and its windows add up to the whole range.
 * Answers the problems found.
 */
export async function derivedProblems(
  credits: CreditService,
  user: string,
  entries: readonly JournalEntry[],
  from: number,
  to: number,
): Promise<string[]> {
  const problems: string[] = [];
  const range = { account: user, from: new Date(from), to: new Date(to) };

  const want = new Map<string, number>();
  for (const e of entries) {
    const takeBack = e.takeBack != null;
    const sign = e.type === "reverse" ? -1 : (e.type === "deduct" || e.type === "commit_reserved") && !takeBack ? 1 : 0;
    if (sign === 0) continue;
    const at = (e.occurredAt ?? e.createdAt).getTime();
    if (at < from || at >= to) continue;
    const key = JSON.stringify([Math.floor(at / DAY) * DAY, e.feature ?? null, e.spender ?? null]);
    want.set(key, (want.get(key) ?? 0) + sign * e.amount);
  }
  const usage = await credits.getUsage({
    ...range,
    interval: "day",
    groupBy: ["feature", "spender"],
    kinds: ["spend"],
  });
  const got = new Map<string, number>();
  for (const r of usage.rows) {
    const key = JSON.stringify([Math.floor(r.start.getTime() / DAY) * DAY, r.feature ?? null, r.spender ?? null]);
    got.set(key, (got.get(key) ?? 0) + r.credits);
  }
  const nonZero = (m: Map<string, number>) =>
    JSON.stringify([...m].filter(([, v]) => v !== 0).sort(([a], [b]) => (a < b ? -1 : 1)));
  if (nonZero(got) !== nonZero(want))
    problems.push(
      `usage by day, feature and spender ${nonZero(got)}, the journal's charges less reversals ${nonZero(want)}`,
    );

  const byDay = (await credits.getRevenue({ ...range, interval: "day" })).rows;
  const whole = (await credits.getRevenue({ ...range, interval: null })).rows;
  const last = new Map<string, number>();
  const sums = new Map<string, number[]>();
  for (const r of byDay) {
    const c = r.currency ?? "credits";
    if (r.deferredStart + r.paid - r.recognized - r.breakage - r.refunds !== r.deferredEnd)
      problems.push(`revenue ${c} on ${r.start.toISOString()} does not roll forward: ${JSON.stringify(r)}`);
    const before = last.get(c);
    if (before !== undefined && before !== r.deferredStart)
      problems.push(
        `revenue ${c} on ${r.start.toISOString()} starts at ${r.deferredStart}, the day before ended at ${before}`,
      );
    last.set(c, r.deferredEnd);
    const s = sums.get(c) ?? [0, 0, 0, 0, 0];
    sums.set(c, [
      s[0]! + r.paid,
      s[1]! + r.recognized,
      s[2]! + r.breakage,
      s[3]! + r.refunds,
      s[4]! + r.unbilledCredits,
    ]);
  }
  for (const r of whole) {
    const c = r.currency ?? "credits";
    const s = sums.get(c) ?? [0, 0, 0, 0, 0];
    const w = [r.paid, r.recognized, r.breakage, r.refunds, r.unbilledCredits];
    if (JSON.stringify(s) !== JSON.stringify(w))
      problems.push(
        `revenue ${c}: the days add up to ${JSON.stringify(s)}, the whole range reads ${JSON.stringify(w)}`,
      );
  }
  return problems;
}

/**
 * A reversal's unit of work in the model (docs/concepts.md, "Giving a charge back"), as the store
 * committed it: the credits come back to the balance; each portion goes back to its grant (a new
 * grant the reversal made for debt an addition paid since, added), but those that paid debt
 * instead; what the grants did not get takes debt off; then what the unit's `expire` and `void`
 * entries take from grants closed since is removed again. The replay in `audit()` checks the
 * portions against the charge.
 */
export function reverseInModel(m: CreditModel, changes: Changes): void {
  // (Entries before the reversal — a settlement of the unit — are the model's own `settle()`.)
  // `m` is the reversal's unit (docs/units.md): the entries of another unit are not its.
  const reversal = changes.entries.find((x) => x.type === "reverse");
  const unit = reversal?.unit ?? null;
  let after = false;
  for (const x of changes.entries) {
    if ((x.unit ?? null) !== unit) continue;
    if (x.type === "reverse") {
      after = true;
      m.balance += x.amount;
      let back = 0;
      for (const p of x.grants) {
        if (p.kind === "debt_paid") continue;
        back += p.amount;
        const g = m.grants.find((y) => y.id === p.grantId);
        if (g !== undefined) g.remaining += p.amount;
        else
          m.grants.push({
            id: p.grantId,
            remaining: p.amount,
            expiresAt: null,
            priority: 0,
            createdAt: m.now,
            closed: null,
          });
      }
      m.debt -= x.amount - back;
    } else if (after && (x.type === "expire" || x.type === "void")) {
      for (const p of x.grants) {
        const g = m.grants.find((y) => y.id === p.grantId);
        if (g !== undefined) g.remaining -= p.amount;
        m.balance -= p.amount;
      }
    }
  }
}
