#!/usr/bin/env node
// Run after tsup (`npm run build`): in each entry point's declarations (package.json `exports`), a
// name the entry's JavaScript does not export is marked `type` in the declarations' export lists.
// The declaration bundler (rollup-plugin-dts, tsup.config.ts) drops the `type` of
// `export type { Account } from "./models/index.js"`: for a name that is also a value in its module
// (a zod schema, a class) the declarations would offer a value the JavaScript lacks, so the source
// re-declared such names as aliases (`export type Account = M.Account`), which gave each of them
// two declarations (`Account` and `Account_2` in the API reports). Marked here, the entry exports
// the one declaration, as a type.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import console from "node:console";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const ts = createRequire(import.meta.url)("typescript");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

const parse = (file) =>
  ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);

/** The names a built ES module exports (tsup writes `export { … }` lists and `export` declarations). */
function runtimeExports(file) {
  const names = new Set();
  for (const statement of parse(file).statements) {
    if (ts.isExportDeclaration(statement)) {
      if (!statement.exportClause) throw new Error(`${file}: \`export *\` is not handled`);
      if (ts.isNamespaceExport(statement.exportClause)) names.add(statement.exportClause.name.text);
      else for (const spec of statement.exportClause.elements) names.add(spec.name.text);
    } else if (
      ts.canHaveModifiers(statement) &&
      ts.getModifiers(statement)?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword)
    ) {
      if (ts.isVariableStatement(statement))
        for (const d of statement.declarationList.declarations) names.add(d.name.getText());
      else if (statement.name) names.add(statement.name.text);
    } else if (ts.isExportAssignment(statement)) names.add("default");
  }
  return names;
}

let marked = 0;
for (const target of Object.values(pkg.exports)) {
  if (typeof target !== "object" || !target.import?.types) continue;
  // Both formats export the same names (`npm run api:check` compares them with the declarations).
  const values = runtimeExports(join(root, target.import.default));
  for (const types of [target.import.types, target.require?.types].filter(Boolean)) {
    const file = join(root, types);
    const source = parse(file);
    const inserts = [];
    for (const statement of source.statements) {
      if (!ts.isExportDeclaration(statement) || statement.isTypeOnly) continue;
      if (!statement.exportClause || !ts.isNamedExports(statement.exportClause)) continue;
      for (const spec of statement.exportClause.elements)
        if (!spec.isTypeOnly && !values.has(spec.name.text)) inserts.push(spec.getStart(source));
    }
    if (inserts.length === 0) continue;
    let text = source.getFullText();
    for (const at of inserts.sort((a, b) => b - a)) text = `${text.slice(0, at)}type ${text.slice(at)}`;
    writeFileSync(file, text);
    marked += inserts.length;
  }
}
console.log(`declarations: ${marked} type-only exports marked`);

// The bundler drops the doc comment of `export * as periods from …` (src/index.ts): the API report
// would then call the namespace undocumented and untagged. Its comment is copied from the source
// onto the `declare namespace` the declarations hold. The bundler also names the namespace after
// its file (periods.d.ts: `periods_d`, its members' aliases `periods_d_…`): named here as exported.
const namespaceDocs = { periods: /\/\*\*((?:(?!\*\/)[\s\S])*)\*\/\nexport \* as periods from/ };
const rootSource = readFileSync(join(root, "src/index.ts"), "utf8");
for (const types of [pkg.exports["."].import.types, pkg.exports["."].require.types]) {
  const file = join(root, types);
  let text = readFileSync(file, "utf8");
  for (const [name, pattern] of Object.entries(namespaceDocs)) {
    const doc = pattern.exec(rootSource);
    const declaration = `\ndeclare namespace ${name} {`;
    if (text.includes(`\ndeclare namespace ${name}_d {`))
      text = text.replaceAll(`${name}_d as ${name}`, name).replace(new RegExp(`\\b${name}_d(?=\\b|_)`, "g"), name);
    if (doc === null || !text.includes(declaration)) throw new Error(`${file}: no namespace ${name} to document`);
    // Once: a second run finds it documented.
    if (!text.includes(`*/${declaration}`)) text = text.replace(declaration, `\n/**${doc[1]}*/${declaration}`);
  }
  writeFileSync(file, text);
}
