#!/usr/bin/env node
// The public surface, one file per entry point (api/<entry>.api.md): every name an entry point
// exports, with its kind and its signature (a class's or interface's public members one a line),
// read from the built declarations (dist/, `npm run build` first). CI runs
// `npm run api:check`, which fails when the surface changed without its report: a change of the
// public surface is then a reviewed diff. `npm run api:update` writes the reports.
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import console from "node:console";
import process from "node:process";
import ts from "typescript";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const update = process.argv.includes("--update");
const entries = Object.entries(pkg.exports)
  .filter(([, v]) => typeof v === "object" && v.import?.types)
  .map(([subpath, v]) => ({
    subpath,
    file: join(root, v.import.types),
    esm: join(root, v.import.default),
    cjs: join(root, v.require.default),
  }));
const require = createRequire(import.meta.url);

const program = ts.createProgram(
  entries.map((e) => e.file),
  {
    strict: true,
    skipLibCheck: true,
    module: ts.ModuleKind.Node16,
    moduleResolution: ts.ModuleResolutionKind.Node16,
    noEmit: true,
  },
);
const checker = program.getTypeChecker();

function kindOf(symbol) {
  const s = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
  // `export type { X }` of a value: only its type is exported.
  const typeOnly = (symbol.declarations ?? []).some((d) => ts.isTypeOnlyImportOrExportDeclaration(d));
  const f = typeOnly ? s.flags & ~(ts.SymbolFlags.Value | ts.SymbolFlags.Class | ts.SymbolFlags.Function) : s.flags;
  const kinds = [];
  if (f & ts.SymbolFlags.Class) kinds.push("class");
  else if (f & ts.SymbolFlags.Function) kinds.push("function");
  else if (f & ts.SymbolFlags.Variable) kinds.push("const");
  if (f & ts.SymbolFlags.Interface) kinds.push("interface");
  if (f & ts.SymbolFlags.TypeAlias) kinds.push("type");
  if (f & ts.SymbolFlags.Enum) kinds.push("enum");
  if (f & (ts.SymbolFlags.ValueModule | ts.SymbolFlags.NamespaceModule)) kinds.push("namespace");
  return kinds.join(" + ") || "other";
}

const F = ts.TypeFormatFlags.NoTruncation | ts.TypeFormatFlags.UseFullyQualifiedType;
const flat = (text) => text.replace(/\s+/g, " ").trim();
const hidden = (p) =>
  p.name.startsWith("#") ||
  p.name.startsWith("__@") ||
  (p.declarations ?? []).some(
    (d) => ts.getCombinedModifierFlags(d) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected),
  );

/** A class's or interface's public members, one a line. */
function members(type, at, prefix = "  ") {
  const lines = [];
  for (const sig of type.getConstructSignatures()) lines.push(`${prefix}new ${checker.signatureToString(sig, at, F)}`);
  for (const sig of type.getCallSignatures()) lines.push(`${prefix}${checker.signatureToString(sig, at, F)}`);
  for (const p of checker.getPropertiesOfType(type)) {
    if (hidden(p) || p.name === "prototype") continue;
    const decl = p.valueDeclaration ?? p.declarations?.[0];
    const ro = decl && ts.getCombinedModifierFlags(decl) & ts.ModifierFlags.Readonly ? "readonly " : "";
    const opt = p.flags & ts.SymbolFlags.Optional ? "?" : "";
    const t = checker.getTypeOfSymbolAtLocation(p, at);
    if (p.flags & ts.SymbolFlags.Method)
      for (const sig of t.getCallSignatures())
        lines.push(`${prefix}${p.name}${opt}${checker.signatureToString(sig, at, F)}`);
    else lines.push(`${prefix}${ro}${p.name}${opt}: ${checker.typeToString(t, at, F)}`);
  }
  return lines;
}

/** The declaration of one export, as TypeScript reads it. */
function signature(name, exported) {
  const s = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
  const decl = s.valueDeclaration ?? s.declarations?.[0];
  const lines = [];
  if (s.flags & ts.SymbolFlags.Class) {
    lines.push(
      `class ${name}${decl.heritageClauses ? ` ${decl.heritageClauses.map((h) => flat(h.getText())).join(" ")}` : ""}`,
    );
    lines.push(
      ...members(checker.getTypeOfSymbolAtLocation(s, decl), decl, "  static ").map((l) =>
        l.replace("static new ", "new "),
      ),
    );
    lines.push(...members(checker.getDeclaredTypeOfSymbol(s), decl));
  } else if (s.flags & ts.SymbolFlags.Function) {
    for (const sig of checker.getTypeOfSymbolAtLocation(s, decl).getCallSignatures())
      lines.push(`function ${name}${checker.signatureToString(sig, decl, F)}`);
  } else if (s.flags & ts.SymbolFlags.Variable) {
    lines.push(
      `const ${name}: ${decl.type ? flat(decl.type.getText()) : checker.typeToString(checker.getTypeOfSymbolAtLocation(s, decl), decl, F)}`,
    );
  } else if (s.flags & ts.SymbolFlags.ValueModule) {
    for (const e of checker.getExportsOfModule(s)) lines.push(...signature(`${name}.${e.getName()}`, e));
  }
  if (s.flags & ts.SymbolFlags.Interface) {
    const i = s.declarations.find(ts.isInterfaceDeclaration);
    const params = i.typeParameters ? `<${i.typeParameters.map((p) => flat(p.getText())).join(", ")}>` : "";
    lines.push(
      `interface ${name}${params}${i.heritageClauses ? ` ${i.heritageClauses.map((h) => flat(h.getText())).join(" ")}` : ""}`,
    );
    lines.push(...members(checker.getDeclaredTypeOfSymbol(s), i));
  }
  if (s.flags & ts.SymbolFlags.TypeAlias) {
    const a = s.declarations.find(ts.isTypeAliasDeclaration);
    const params = a.typeParameters ? `<${a.typeParameters.map((p) => flat(p.getText())).join(", ")}>` : "";
    const t = checker.getDeclaredTypeOfSymbol(s);
    lines.push(
      `type ${name}${params} = ${params ? flat(a.type.getText()) : checker.typeToString(t, a, F | ts.TypeFormatFlags.InTypeAlias)}`,
    );
    // An alias of a class or interface: its members, as for the class or interface itself.
    if (!params && t.flags & ts.TypeFlags.Object && t.objectFlags & (ts.ObjectFlags.Class | ts.ObjectFlags.Interface))
      lines.push(...members(t, a));
  }
  return lines;
}

mkdirSync(join(root, "api"), { recursive: true });
let changed = 0;
let mismatches = 0;
for (const { subpath, file, esm, cjs } of entries) {
  const source = program.getSourceFile(file);
  if (!source) throw new Error(`no declarations at ${file}: run npm run build first`);
  const moduleSymbol = checker.getSymbolAtLocation(source);
  const exported = moduleSymbol ? checker.getExportsOfModule(moduleSymbol) : [];
  // The declarations' values must be what the JavaScript exports, in both formats: a name the types
  // offer as a value but the module lacks type-checks and then fails at run time (a type-only
  // re-export of a name that is also a value can come out of the declaration bundler as a value).
  const declared = exported
    .filter((s) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s).flags & ts.SymbolFlags.Value)
    .map((s) => s.getName())
    .sort();
  for (const [format, names] of [
    ["ESM", Object.keys(await import(pathToFileURL(esm).href))],
    ["CJS", Object.keys(require(cjs)).filter((n) => n !== "__esModule")],
  ]) {
    const runtime = new Set(names);
    const missing = declared.filter((n) => !runtime.has(n));
    const undeclared = names.filter((n) => !declared.includes(n));
    if (missing.length + undeclared.length === 0) continue;
    mismatches++;
    if (missing.length > 0)
      console.error(`${subpath} (${format}): declared as values but not exported: ${missing.join(", ")}`);
    if (undeclared.length > 0)
      console.error(`${subpath} (${format}): exported but not declared: ${undeclared.join(", ")}`);
  }
  const rows = exported.map((s) => `| \`${s.getName()}\` | ${kindOf(s)} |`).sort();
  const byName = [...exported].sort((a, b) => (a.getName() < b.getName() ? -1 : a.getName() > b.getName() ? 1 : 0));
  // The declaration bundler renames clashing declarations (`Account$1`): the name as written.
  const signatures = byName
    .map((s) => `### ${s.getName()}\n\n\`\`\`ts\n${signature(s.getName(), s).join("\n")}\n\`\`\`\n`)
    .join("\n")
    .replace(/\b([A-Za-z_]\w*)\$\d+\b/g, "$1")
    // The checker prints a union of string literals in the order it met them, which differs from
    // one build to the next: sorted, the report is the same for the same surface.
    .replace(/"[^"\n]*"(?: \| "[^"\n]*")+/g, (union) => union.split(" | ").sort().join(" | "));
  const name = subpath === "." ? "credit-management" : `credit-management${subpath.slice(1)}`;
  const text =
    `# \`${name}\`\n\nGenerated by \`npm run api:update\` from the built declarations; checked in CI.\n\n` +
    // Names and kinds only: the checker's printed signatures are not stable between builds (chunk
    // paths and hashes in \`import(…)\` types, the order of union members and of enum keys).
    `${rows.length} exports.\n\n| export | kind |\n| --- | --- |\n${rows.join("\n")}\n`;
  void signatures;
  const out = join(root, "api", `${name.replace(/\//g, "__")}.api.md`);
  const before = existsSync(out) ? readFileSync(out, "utf8") : null;
  if (before === text) continue;
  changed++;
  if (update) writeFileSync(out, text);
  else
    console.error(
      `api/${name.replace(/\//g, "__")}.api.md is out of date: the public surface of ${name} changed (run npm run api:update and review the diff)`,
    );
}
if (mismatches > 0 || (!update && changed > 0)) process.exit(1);
console.log(update ? `api reports: ${changed} written` : "api reports: up to date");
