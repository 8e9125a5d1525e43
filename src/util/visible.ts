/**
 * Control, invisible and bidirectional formatting characters: C0 and C1 controls, the bidi marks,
 * embeddings, overrides and isolates, zero-width spaces, word joiners and the byte order mark, the
 * line and paragraph separators. Shown as `⟨U+202E⟩` wherever stored text is displayed, in the
 * console (docs/console.md, "Security") and the command line's tables (docs/cli.md):
 * `refund \u202E0001 stiderc` must not read "refund credits 1000".
 */
const HIDDEN =
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  /[\u0000-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]/g;

/** `text` with every control and bidi character written out as `⟨U+XXXX⟩`. */
export function visible(text: string): string {
  HIDDEN.lastIndex = 0;
  if (!HIDDEN.test(text)) return text;
  return text.replace(HIDDEN, (c) => `\u27e8U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}\u27e9`);
}
