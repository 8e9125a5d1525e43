import { describe, expect, it } from "vitest";
import { csvField, toCsv } from "../src/util/csv.js";

describe("CSV export (RFC 4180, inert against spreadsheet formulas; docs/usage.md)", () => {
  it("quotes fields holding quotes, commas and line breaks, doubling the quotes", () => {
    expect(csvField("plain")).toBe("plain");
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField("a,b")).toBe('"a,b"');
    expect(csvField("two\nlines")).toBe('"two\nlines"');
    expect(csvField("cr\rhere")).toBe('"cr\rhere"');
    expect(csvField("")).toBe("");
  });

  it("writes numbers, dates and empty values as they are", () => {
    expect(csvField(42)).toBe("42");
    expect(csvField(-7)).toBe("-7"); // a number is no formula
    expect(csvField(Number.NaN)).toBe("");
    expect(csvField(null)).toBe("");
    expect(csvField(undefined)).toBe("");
    const d = new Date(Date.now());
    expect(csvField(d)).toBe(d.toISOString());
  });

  it("makes text that a spreadsheet would run as a formula inert", () => {
    for (const [input, out] of [
      ['=HYPERLINK("http://evil","x")', '"\'=HYPERLINK(""http://evil"",""x"")"'],
      ["+1+1", "'+1+1"],
      ["-2+3", "'-2+3"],
      ["@SUM(A1)", "'@SUM(A1)"],
      ["\tcmd", "'\tcmd"],
      ["\r=1", '"\'\r=1"'],
      ["\uff1d1+1", "'\uff1d1+1"],
      ["=1,2", '"\'=1,2"'],
    ] as const) {
      expect(csvField(input), JSON.stringify(input)).toBe(out);
    }
    // Only at the start: inside a field these are text already.
    expect(csvField("gpt-4o")).toBe("gpt-4o");
    expect(csvField("a=b")).toBe("a=b");
  });

  it("ends every record, the header too, with CRLF", () => {
    const day = new Date(Date.now());
    const text = toCsv(
      ["start", "model", "credits"],
      [
        [day, "gpt,4", 12],
        [day, "=cmd", 3],
      ],
    );
    const t = day.toISOString();
    expect(text).toBe(`start,model,credits\r\n${t},"gpt,4",12\r\n${t},'=cmd,3\r\n`);
  });
});
