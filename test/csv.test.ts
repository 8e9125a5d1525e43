import { describe, expect, it } from "vitest";
import { csvField, csvLines, csvStream, toCsv } from "../src/util/csv.js";

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

  it("streams a document in pieces of about 64 KiB, each made when the reader asks for it", async () => {
    const rows = Array.from({ length: 20_000 }, (_, i) => [`account-${i}`, "USD", i * 1_000]);
    let made = 0;
    const lines = (function* () {
      for (const line of csvLines(["account", "currency", "paidMinor"], rows)) {
        made++;
        yield line;
      }
    })();
    const reader = csvStream(lines).getReader();
    const first = await reader.read();
    expect(first.done).toBe(false);
    // One piece made, not the document: about 64 KiB of its ~570 KiB.
    expect(made).toBeGreaterThan(1000);
    expect(made).toBeLessThan(5000);
    const pieces = [first.value!];
    for (let r = await reader.read(); !r.done; r = await reader.read()) pieces.push(r.value);
    expect(pieces.length).toBeGreaterThan(5);
    for (const p of pieces) expect(p.byteLength).toBeLessThan(64 * 1024 + 100);
    const text = new TextDecoder().decode(Buffer.concat(pieces));
    expect(text).toBe(toCsv(["account", "currency", "paidMinor"], rows));
  });
});

describe("the usage CSV per unit (docs/usage.md, docs/units.md)", () => {
  it("has a unit column when a row is in another unit, the default unit's rows saying credits", async () => {
    const { createCreditManager, usageCsv } = await import("../src/index.js");
    const m = await createCreditManager();
    try {
      const range = { account: "acme", from: new Date(Date.now() - 60_000), to: new Date(Date.now() + 60_000) };
      await m.credits.addCredits("acme", 100);
      await m.credits.deductCredits("acme", 7);
      const plain = await m.credits.getUsage({ ...range, interval: null });
      expect(usageCsv(plain).split("\r\n")[0]).toBe(
        "start,end,kind,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall",
      );
      await m.credits.addCredits("acme", 10, { unit: "images" });
      await m.credits.deductCredits("acme", 3, { unit: "images" });
      const lines = usageCsv(await m.credits.getUsage({ ...range, interval: null })).split("\r\n");
      expect(lines[0]).toBe("start,end,kind,unit,credits,requests,inputTokens,outputTokens,cachedTokens,shortfall");
      expect(lines.slice(1, 3).map((l) => l.split(",").slice(2, 5).join(","))).toEqual([
        "spend,credits,7",
        "spend,images,3",
      ]);
    } finally {
      await m.close();
    }
  });
});
