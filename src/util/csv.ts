/**
 * CSV as RFC 4180 writes it (docs/usage.md, "Over HTTP"): fields separated by commas, records by
 * CRLF, a field quoted when it holds a quote, comma, CR or LF, its quotes doubled. A text field that
 * begins with `=`, `+`, `-`, `@`, a tab or a CR (or their full-width forms) gets a leading `'`, so
 * a spreadsheet opening the file shows it as text instead of running it as a formula (OWASP, "CSV
 * Injection"): a model name or spender id comes from the host's callers.
 */

/** The first characters a spreadsheet reads as the start of a formula. */
const FORMULA = /^[=+\-@\t\r\uff1d\uff0b\uff0d\uff20]/;
const NEEDS_QUOTES = /[",\r\n]/;

/** One field: numbers as they are, dates in ISO 8601, null and undefined empty, text made inert and quoted as needed. */
export function csvField(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "";
  if (typeof value === "bigint" || typeof value === "boolean") return String(value);
  let text = value instanceof Date ? value.toISOString() : String(value);
  if (!(value instanceof Date) && FORMULA.test(text)) text = `'${text}`;
  return NEEDS_QUOTES.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** A CSV document: the header line, then one line per row, each ending in CRLF. */
export function toCsv(header: readonly string[], rows: Iterable<readonly unknown[]>): string {
  let out = "";
  for (const line of csvLines(header, rows)) out += line;
  return out;
}

/** The lines of `toCsv`'s document, one at a time, each ending in CRLF. */
export function* csvLines(header: readonly string[], rows: Iterable<readonly unknown[]>): Generator<string> {
  yield `${header.map(csvField).join(",")}\r\n`;
  for (const row of rows) yield `${row.map(csvField).join(",")}\r\n`;
}

/** Bytes a chunk of `csvStream` gathers before it is handed on. */
const CHUNK = 64 * 1024;

/**
 * `lines` as a byte stream of UTF-8 (docs/revenue.md, "Where finance reads it"): chunks of about
 * 64 KiB, each made when the reader asks for it (a slow client holds no more than a chunk of text
 * at a time), so a large document is never one string.
 */
export function csvStream(lines: Iterable<string>): ReadableStream<Uint8Array> {
  const it = lines[Symbol.iterator]();
  const encoder = new TextEncoder();
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        let chunk = "";
        for (;;) {
          const next = it.next();
          if (next.done === true) {
            if (chunk !== "") controller.enqueue(encoder.encode(chunk));
            controller.close();
            return;
          }
          chunk += next.value;
          if (chunk.length >= CHUNK) break;
        }
        controller.enqueue(encoder.encode(chunk));
      },
      cancel() {
        it.return?.(undefined);
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * The headers of a CSV download (docs/usage.md, "Over HTTP"; docs/revenue.md, "Where finance reads
 * it"): RFC 4180 with a header line, saved as `filename`, never cached nor sniffed as something else.
 */
export function csvHeaders(filename: string): Record<string, string> {
  return {
    "content-type": "text/csv; charset=utf-8; header=present",
    "content-disposition": `attachment; filename="${filename}"`,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  };
}
