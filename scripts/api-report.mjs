#!/usr/bin/env node
// The public surface, one API Extractor report per entry point of package.json `exports`
// (api/<entry>.api.md): every export with its signature, a class's or interface's members, and a
// warning where a signature uses a type the entry point does not export. Read from the built
// declarations (dist/, `npm run build` first). `npm run api:check` (CI) fails when a report differs
// from the declarations: a change of the public surface is then a reviewed diff. `npm run api:update`
// writes the reports. It also fails when an entry point's declared values differ from what its ESM or
// CJS module exports, and it guards what the surface promises (docs/api.md): every exported
// declaration and member documented, each declaration with a release tag (`@public`, or `@beta`
// for what 0.x may still change), no type in a signature that no entry point exports
// (`ae-forgotten-export`), and at most MAX_DECLARATIONS declarations across the entries.
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import console from "node:console";
import process from "node:process";
import { CompilerState, Extractor, ExtractorConfig, ExtractorLogLevel } from "@microsoft/api-extractor";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const update = process.argv.includes("--update");
// Exported declarations across every entry point (a report's `export …` lines): each is a promise.
// A ratchet: lower it as names leave, never raise it without saying why here. One runner for
// the contract's parts (./testing) put it at 491; naming what a module's unit of work is handed
// (`UnitWork`, `EntryMeta`, `NewGrant` in ./core) at 494; the test clock (`createTestClock`,
// `TestClock`, `TestClockOptions`, `TestClockStep` in ./testing) at 498; the error of a module that
// breaks what the core guarantees (`ModuleError`, docs/modules.md "What a module may change") at
// 499; naming the types a user met and could not name (the modules' error-code unions, `SetAside`,
// the core's grant sources and notification types, the HTTP entry's `CreditErrorCode`,
// `MeteringOptionsBase` and Fastify shapes) at 513; no forgotten type left (the schema's
// `TableSpecs`, `TableSpec` and `IndexSpec` named, the unused `SqlTable` gone, the module parts'
// PostgreSQL types exported by `credit-management/store` alone, as the SQLite and MongoDB ones)
// at 511; what `credits.closePeriod` answers (`PeriodClose` in ./models, docs/revenue.md
// "Closing a month") at 512; the parts a core manager is given (docs/modules.md, "Parts of the
// core": `subscriptionsPart`, `notificationsPart`, `expirationPart`, their two option types,
// `CorePart`, `ManagerParts`, `PartServices` in ./core, `CorePart` in the root beside
// `CoreCreditService`, whose `notifications` takes one) at 521.
const MAX_DECLARATIONS = 521;
const require = createRequire(import.meta.url);
// The TypeScript that API Extractor's program is built with, to read that program's symbols.
const ts = createRequire(require.resolve("@microsoft/api-extractor"))("typescript");

const entries = Object.entries(pkg.exports)
  .filter(([, v]) => typeof v === "object" && v.import?.types)
  .map(([subpath, v]) => {
    const name = subpath === "." ? pkg.name : `${pkg.name}${subpath.slice(1)}`;
    return {
      name,
      report: name.replace(/\//g, "__"),
      file: join(root, v.import.types),
      esm: join(root, v.import.default),
      cjs: join(root, v.require.default),
    };
  });

const temp = join(root, "node_modules", ".cache", "api-extractor");
rmSync(temp, { recursive: true, force: true });

function configFor(entry) {
  return ExtractorConfig.prepare({
    configObject: {
      projectFolder: root,
      mainEntryPointFilePath: entry.file,
      compiler: {
        overrideTsconfig: {
          // The project's lib (tsconfig.json): without the DOM's globals, whose names (`Notification`,
          // `Cache`, `WorkerOptions`) would make API Extractor rename the package's own (`Cache_2`).
          compilerOptions: {
            strict: true,
            module: "node16",
            moduleResolution: "node16",
            lib: ["es2023"],
            types: ["node"],
          },
          files: entries.map((e) => e.file),
        },
      },
      newlineKind: "lf",
      apiReport: {
        enabled: true,
        reportFileName: entry.report,
        reportFolder: join(root, "api"),
        reportTempFolder: temp,
      },
      docModel: { enabled: false },
      dtsRollup: { enabled: false },
      tsdocMetadata: { enabled: false },
      messages: {
        compilerMessageReporting: { default: { logLevel: "warning" } },
        extractorMessageReporting: {
          default: { logLevel: "warning" },
          // Every exported declaration says what it promises: @public, or @beta while 0.x may change it.
          "ae-missing-release-tag": { logLevel: "warning" },
          // Written into the report, where a reviewer reads them.
          "ae-forgotten-export": { logLevel: "none", addToApiReportFile: true },
          // Every exported declaration and member has a doc comment (the report marks one without).
          "ae-undocumented": { logLevel: "warning" },
          // A {@link} in a doc comment is for an editor's hover, which resolves it from the source.
          "ae-unresolved-link": { logLevel: "none" },
        },
        // The doc comments are written for readers, not for TSDoc's parser.
        tsdocMessageReporting: { default: { logLevel: "none" } },
      },
    },
    configObjectFullPath: undefined,
    packageJsonFullPath: join(root, "package.json"),
  });
}

/**
 * The report with each inferred enum's keys sorted. The declaration emitter prints a zod enum's
 * inferred key object (`z.ZodMiniEnum<{ a: "a"; b: "b" }>`) in the order the compiler first created
 * each string literal type, so an edit elsewhere in the program reorders them; the order carries no
 * meaning, and sorted the report changes only when the keys do.
 */
function normalized(text) {
  const lines = text.split("\n");
  const out = [];
  let keys = null;
  for (const line of lines) {
    if (keys && /^\s+(?:"[^"]*"|[\w$]+): "[^"]*";$/.test(line)) {
      keys.push(line);
      continue;
    }
    if (keys) {
      out.push(...keys.sort());
      keys = null;
    }
    out.push(line);
    if (/Zod(Mini)?Enum<\{$/.test(line)) keys = [];
  }
  if (keys) out.push(...keys.sort());
  return out.join("\n");
}

const configs = entries.map((e) => ({ entry: e, config: configFor(e) }));
// One program for all the entry points.
const compilerState = CompilerState.create(configs[0].config, {
  additionalEntryPoints: entries.map((e) => e.file),
});

// API Extractor reads each entry point alone: a type one entry's signature uses and another entry
// exports (an entity of the root in `credit-management/postgres`, the store contract in the root)
// would be "forgotten". The package exports it, from its home entry (CONTRIBUTING.md, "API reports"):
// such a warning is dropped. A type that no entry point exports keeps its warning.
const program = compilerState.program;
const checker = program.getTypeChecker();
const distDir = join(root, "dist");
const exportedBy = new Map(); // declaration -> the entry points that export it
for (const { name, file } of entries) {
  const source = program.getSourceFile(file);
  const moduleSymbol = source && checker.getSymbolAtLocation(source);
  for (const s of moduleSymbol ? checker.getExportsOfModule(moduleSymbol) : []) {
    const target = s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s;
    for (const d of target.declarations ?? []) exportedBy.set(d, [...(exportedBy.get(d) ?? []), name]);
  }
}
/** The symbols named `name` declared at the top of a built declaration file (chunks included). */
function declaredNamed(name) {
  const found = [];
  for (const source of program.getSourceFiles()) {
    if (!source.fileName.startsWith(distDir)) continue;
    const local = source.locals?.get(name);
    if (local && !(local.flags & ts.SymbolFlags.Alias)) found.push(local);
  }
  return found;
}
/** One type of that name in the package (API Extractor's `X_2` is `X`), and another entry exports it. */
function exportedElsewhere(entryName, symbolName) {
  const found = declaredNamed(symbolName.replace(/(_\d+|\$\d+)$/, ""));
  return (
    found.length === 1 &&
    (found[0].declarations ?? []).some((d) => (exportedBy.get(d) ?? []).some((e) => e !== entryName))
  );
}
// A name exported `type` (scripts/dts-type-exports.mjs marks them) is a type, whatever it names.
const typeOnly = (s) => s.declarations?.some((d) => ts.isTypeOnlyImportOrExportDeclaration(d)) ?? false;
/** The names an entry exports as types only that are values where declared (a zod schema, a class). */
function typeOnlyValues(file) {
  const source = program.getSourceFile(file);
  const moduleSymbol = source && checker.getSymbolAtLocation(source);
  return new Set(
    (moduleSymbol ? checker.getExportsOfModule(moduleSymbol) : [])
      .filter((s) => typeOnly(s) && checker.getAliasedSymbol(s).flags & ts.SymbolFlags.Value)
      .map((s) => s.getName()),
  );
}
/**
 * API Extractor prints a type-only export of a value as the value's declaration (`export const
 * Account: z.ZodObject<…>`): the report says which it is. A schema beside its type reads as the
 * unexported `const` the type is inferred from; a class reads `export class`, marked.
 */
function withTypeOnlyMarked(file, text) {
  const names = typeOnlyValues(file);
  return text.replace(/^export (const|class|abstract class|function) (\w+)\b/gm, (line, kind, name) => {
    if (!names.has(name)) return line;
    if (kind === "const" && text.includes(`\nexport type ${name} `)) return `const ${name}`;
    return `// (exported as a type only)\n${line}`;
  });
}
function withoutExportedElsewhere(entryName, text) {
  const out = [];
  for (const line of text.split("\n")) {
    // On a declaration (`// Warning: (ae-…`) or, at the end, where it is in none (`// dist/…:13:9 - (ae-…`).
    const m = /^\s*\/\/ (?:Warning: |\S+ - )\(ae-forgotten-export\) The symbol "([^"]+)"/.exec(line);
    if (m && exportedElsewhere(entryName, m[1])) continue;
    // A comment block that lost its warnings starts with its separator: dropped too.
    if (/^\s*\/\/$/.test(line) && !/^\s*\/\//.test(out.at(-1) ?? "")) continue;
    out.push(line);
  }
  return out.join("\n").replace("\n// Warnings were encountered during analysis:\n//\n\n", "\n");
}

let failed = 0;
let written = 0;
const declarations = new Map(); // entry name -> its report's exported declarations
for (const { entry, config } of configs) {
  const problems = [];
  const result = Extractor.invoke(config, {
    // Never writes api/ itself: the report is normalized and compared below.
    localBuild: false,
    compilerState,
    messageCallback(message) {
      message.handled = true;
      if (message.category === "console") return;
      if (message.logLevel === ExtractorLogLevel.Error || message.logLevel === ExtractorLogLevel.Warning)
        problems.push(message.formatMessageWithLocation(root));
    },
  });
  for (const p of problems) console.error(`${entry.name}: ${p}`);
  // API Extractor writes the report it made to `temp`; compared here once the enums' keys are sorted.
  const committed = join(root, "api", `${entry.report}.api.md`);
  const made = join(temp, `${entry.report}.api.md`);
  const text = withTypeOnlyMarked(
    entry.file,
    withoutExportedElsewhere(entry.name, normalized(readFileSync(made, "utf8"))),
  );
  writeFileSync(made, text);
  declarations.set(entry.name, text.match(/^export /gm)?.length ?? 0);
  // A type a user meets is one they can name, or it is not in the signature (CONTRIBUTING.md, "API reports").
  const forgotten = [...text.matchAll(/\(ae-forgotten-export\) The symbol "([^"]+)"/g)].map((m) => m[1]);
  if (forgotten.length > 0) {
    failed++;
    console.error(
      `api/${entry.report}.api.md: ${forgotten.join(", ")} used by a signature and exported by no entry point: ` +
        "export each from the entry of its area, or keep it out of the signature",
    );
  }
  const undocumented = text.match(/\(undocumented\)/g)?.length ?? 0;
  if (undocumented > 0) {
    failed++;
    console.error(`api/${entry.report}.api.md: ${undocumented} declarations or members without a doc comment`);
  }
  if (!existsSync(committed) || readFileSync(committed, "utf8") !== text) {
    if (update) {
      writeFileSync(committed, text);
      written++;
    } else {
      failed++;
      console.error(
        `api/${entry.report}.api.md is out of date: the public surface of ${entry.name} changed. ` +
          "Run npm run api:update, review the diff and commit it.",
      );
      // What changed, as the reviewer will see it (the head of it).
      const diff = spawnSync("diff", ["-u", committed, made], { encoding: "utf8" });
      console.error(diff.stdout.split("\n").slice(0, 60).join("\n"));
    }
  }
  if (result.errorCount > 0 || problems.length > 0) failed++;
}

// The declarations' values must be what the JavaScript exports, in both formats: a name the types
// offer as a value but the module lacks type-checks and then fails at run time (a type-only
// re-export of a name that is also a value can come out of the declaration bundler as a value).
for (const { name, file, esm, cjs } of entries) {
  const source = compilerState.program.getSourceFile(file);
  const moduleSymbol = source && checker.getSymbolAtLocation(source);
  const declared = (moduleSymbol ? checker.getExportsOfModule(moduleSymbol) : [])
    .filter((s) => !typeOnly(s))
    .filter((s) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s).flags & ts.SymbolFlags.Value)
    .map((s) => s.getName());
  for (const [format, names] of [
    ["ESM", Object.keys(await import(pathToFileURL(esm).href))],
    ["CJS", Object.keys(require(cjs)).filter((n) => n !== "__esModule")],
  ]) {
    const runtime = new Set(names);
    const missing = declared.filter((n) => !runtime.has(n));
    const undeclared = names.filter((n) => !declared.includes(n));
    if (missing.length > 0)
      console.error(`${name} (${format}): declared as values but not exported: ${missing.join(", ")}`);
    if (undeclared.length > 0)
      console.error(`${name} (${format}): exported but not declared: ${undeclared.join(", ")}`);
    if (missing.length + undeclared.length > 0) failed++;
  }
}

const total = [...declarations.values()].reduce((a, b) => a + b, 0);
if (total > MAX_DECLARATIONS) {
  failed++;
  console.error(
    `${total} exported declarations across the entry points, over ${MAX_DECLARATIONS}: ` +
      [...declarations].map(([name, n]) => `${name} ${n}`).join(", "),
  );
}

rmSync(temp, { recursive: true, force: true });
if (failed > 0) process.exit(1);
console.log(
  `${update ? `api reports: ${written} written` : "api reports: up to date"}; ${total} exported declarations`,
);
