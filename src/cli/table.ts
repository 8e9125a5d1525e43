/** Aligned columns, indented by two spaces; `numeric` columns right-aligned. No header line when every header is empty. */
export function table(headers: readonly string[], rows: readonly string[][], numeric: readonly boolean[]): string {
  const all = headers.every((h) => h === "") ? rows : [headers, ...rows];
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
