import { visible } from "../util/visible.js";

/**
 * Aligned columns, indented by two spaces; `numeric` columns right-aligned. No header line when
 * every header is empty. Cells show control and bidi characters as `⟨U+XXXX⟩`, as the console does
 * (docs/cli.md): stored text cannot move the cursor, forge a line or reorder what is printed.
 */
export function table(headers: readonly string[], rows: readonly string[][], numeric: readonly boolean[]): string {
  const cells = rows.map((r) => r.map(visible));
  const all = headers.every((h) => h === "") ? cells : [headers, ...cells];
  const widths = headers.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  return all
    .map(
      (r) =>
        `  ${r
          .map((cell, i) => (numeric[i] === true ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0)))
          .join("  ")
          .trimEnd()}\n`,
    )
    .join("");
}
