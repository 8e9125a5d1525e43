import { visible } from "../util/visible.js";
import { html, type Html, type Part } from "./html.js";

/**
 * The console's one table (docs/console.md, "Pages"): a header of column names, numeric columns
 * right-aligned, and a row saying so when there is none. Cells wrap long text anywhere (the style
 * sheet), so a 300-character value never widens the page.
 */
export interface Column {
  label: string;
  /** A number: right-aligned, tabular figures. */
  num?: boolean;
  /**
   * Short values of the console's own making (times, statuses, buttons): wrapped between words
   * only. Every other cell may wrap anywhere, so stored text of any length never widens the page.
   */
  short?: boolean;
  /** A header for screen readers only (a column of buttons): no room taken for its word. */
  quiet?: boolean;
  /** Stored text that needs room (a message): at least 10rem wide, so it is not cut every few letters. */
  wide?: boolean;
}

/** A cell spanning columns, or with a class of its own. */
export interface Cell {
  cell: Part;
  colspan?: number;
  cls?: string;
}

/** A row: its cells in column order, or with an element id (a link target). */
export type Row = readonly (Part | Cell)[] | { id: string; cells: readonly (Part | Cell)[] };

export interface TableOptions {
  columns: readonly (string | Column)[];
  rows: readonly Row[];
  /** Shown in a row of its own when `rows` is empty. */
  empty?: string;
  /** Shown instead of the table (a paragraph) when `rows` is empty. */
  none?: string;
  id?: string;
  /** A caption for screen readers only. */
  caption?: string;
}

const isCell = (c: Part | Cell): c is Cell =>
  typeof c === "object" && c !== null && !Array.isArray(c) && Object.hasOwn(c, "cell");

export function table(o: TableOptions): Html {
  if (o.rows.length === 0 && o.none !== undefined) return html`<p class="muted">${o.none}</p>`;
  const columns = o.columns.map((c) => (typeof c === "string" ? { label: c } : c));
  const row = (r: Row) => {
    const cells = "cells" in r ? r.cells : r;
    let at = 0;
    const tds = cells.map((c) => {
      const column = columns[at];
      const cell = isCell(c) ? c : { cell: c };
      at += cell.colspan ?? 1;
      const kind =
        column?.num === true ? "num" : column?.short === true ? "short" : column?.wide === true ? "wide" : "";
      const cls = [kind, cell.cls ?? ""].filter((x) => x !== "").join(" ");
      return html`<td${cls === "" ? "" : html` class="${cls}"`}${
        cell.colspan === undefined ? "" : html` colspan="${cell.colspan}"`
      }>${cell.cell}</td>`;
    });
    return "cells" in r
      ? html`<tr id="${r.id}">
          ${tds}
        </tr>`
      : html`<tr>
          ${tds}
        </tr>`;
  };
  return html`<table${o.id === undefined ? "" : html` id="${o.id}"`}>
    ${
      o.caption === undefined
        ? ""
        : html`<caption class="skip">
            ${o.caption}
          </caption>`
    }
    <thead>
      <tr>
        ${columns.map((c) => {
          const label = c.quiet === true ? html`<span class="skip">${c.label}</span>` : c.label;
          return c.num === true ? html`<th scope="col" class="num">${label}</th>` : html`<th scope="col">${label}</th>`;
        })}
      </tr>
    </thead>
    <tbody>
      ${o.rows.map(row)}${
        o.rows.length === 0 && o.empty !== undefined
          ? html`<tr>
              <td colspan="${columns.length}" class="muted">${o.empty}</td>
            </tr>`
          : ""
      }
    </tbody>
  </table>`;
}

/**
 * An id shortened on screen by the style sheet (`.id`: an ellipsis after a few characters), the
 * whole value in the page's text (a copy takes all of it) and on hover (`title`, control and bidi
 * characters written out).
 */
export function shortId(id: string, kind: "id" | "user" = "id"): Html {
  return html`<span class="${kind}" title="${visible(id)}">${id}</span>`;
}
