#!/usr/bin/env node
// The public surface, one API Extractor report per entry point of package.json `exports`
// (api/<entry>.api.md): every export with its signature, a class's or interface's members, and a
// warning where a signature uses a type the entry point does not export. Read from the built
// declarations (dist/, `npm run build` first). `npm run api:check` (CI) fails when a report differs
// from the declarations: a change of the public surface is then a reviewed diff. `npm run api:update`
// writes the reports. It also fails when an entry point's declared values differ from what its ESM or
// CJS module exports.
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
          compilerOptions: { strict: true, module: "node16", moduleResolution: "node16", types: ["node"] },
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
          // No release tags (@public/@beta): everything an entry point exports is public.
          "ae-missing-release-tag": { logLevel: "none" },
          // Written into the report, where a reviewer reads them.
          "ae-forgotten-export": { logLevel: "none", addToApiReportFile: true },
          "ae-undocumented": { logLevel: "none" },
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
 * inferred key object (`z.ZodEnum<{ a: "a"; b: "b" }>`) in the order the compiler first created
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
    if (/ZodEnum<\{$/.test(line)) keys = [];
  }
  if (keys) out.push(...keys.sort());
  return out.join("\n");
}

const configs = entries.map((e) => ({ entry: e, config: configFor(e) }));
// One program for all the entry points.
const compilerState = CompilerState.create(configs[0].config, {
  additionalEntryPoints: entries.map((e) => e.file),
});

let failed = 0;
let written = 0;
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
  const text = normalized(readFileSync(made, "utf8"));
  writeFileSync(made, text);
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
const checker = compilerState.program.getTypeChecker();
for (const { name, file, esm, cjs } of entries) {
  const source = compilerState.program.getSourceFile(file);
  const moduleSymbol = source && checker.getSymbolAtLocation(source);
  const declared = (moduleSymbol ? checker.getExportsOfModule(moduleSymbol) : [])
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

rmSync(temp, { recursive: true, force: true });
if (failed > 0) process.exit(1);
console.log(update ? `api reports: ${written} written` : "api reports: up to date");
