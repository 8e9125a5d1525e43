import { PeriodClose, PeriodCloseMark } from "./model.js";
import type { TableSpec } from "../../schema/tables.js";

/**
 * Tables of the closed periods of revenue reports (docs/revenue.md, "Closing a month"): one row
 * per close, and one mark per account and close (the account's journal seq at the close).
 */
export const periodCloseTableSpecs: Record<"periodCloses" | "periodCloseMarks", TableSpec> = {
  periodCloses: {
    name: "period_closes",
    model: PeriodClose,
    primaryKey: ["through"],
    indexes: [],
  },
  periodCloseMarks: {
    name: "period_close_marks",
    model: PeriodCloseMark,
    // By account first: a report reads the marks of a page of accounts (and Citus distributes by it).
    primaryKey: ["userId", "through"],
    indexes: [],
  },
};
