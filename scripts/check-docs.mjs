#!/usr/bin/env node
// Every TypeScript block of the documentation, checked against the package as a user installs it.
//
// First, every relative link of README.md, docs/**/*.md, CONTRIBUTING.md and CHANGELOG.md must
// resolve (file and #heading), the docs index, docs/README.md, must link every page, and no page of
// docs/ nor the README may name an issue number or a commit id, nor narrate the package's history
// ("no longer", "before this change": checkNarration, below). Then each
// ```ts / ```typescript block of README.md and of every docs/**/*.md (a new page is picked up
// without registering it) is checked: this checkout is packed (`npm pack`: exactly the files that
// ship, so build first), the tarball is unpacked into a fresh project outside the repository (its
// dependencies, the peers and the frameworks the pages use linked from this repository's
// node_modules), each block is written there as a module of its own, all are type-checked as a
// strict TypeScript consumer compiles them (module and moduleResolution node16), and the blocks
// marked `run` are executed with node, each in an empty folder, without any database URL in its
// environment. Last, every ```bash / sh / shell block that calls curl runs against a
// `credit-management serve` of the packed package that this check starts (runCurlBlocks, below).
//
// The conventions for writers (CONTRIBUTING.md#documentation-snippets):
//   - A block is a complete ES module by default: its own imports, top-level await allowed.
//   - `<!-- snippet: fragment -->` right before the fence: the block is compiled after the page's
//     hidden prelude (`<!-- snippet-prelude` … `-->`, one per page) and after any code in the
//     marker comment itself (the lines after its first), for blocks that continue a page's story.
//   - `<!-- snippet: run -->` (also `fragment run`): the block is executed as well and must exit
//     with 0 (in memory: no server, no network, done within the timeout).
//   - `<!-- snippet: skip <reason> -->`: not checked; the reason is required and printed.
//   - A curl block runs by default; its marker's code (with `fragment`) runs before it, unseen.
//
// Usage: node scripts/check-docs.mjs [--no-run] [--no-snippets] [--keep] [file.md …]
//   --no-snippets: only the markers, links, references and wording (seconds; no build needed).
import { execFileSync, spawn } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import console from "node:console";
import { clearTimeout, setTimeout } from "node:timers";
import process from "node:process";
import ts from "typescript";

const started = Date.now();
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const noRun = args.includes("--no-run");
const keep = args.includes("--keep");
const noSnippets = args.includes("--no-snippets");
const only = args.filter((a) => !a.startsWith("--")).map((a) => resolve(a));
const RUN_TIMEOUT_MS = 20_000;
/** Shell blocks that call `curl`: run against a `credit-management serve` that the check starts. */
const SHELL = ["bash", "sh", "shell"];
const CURL = /(^|[\s;|&($])curl\s/;
const CONVENTION = "CONTRIBUTING.md#documentation-snippets";

function markdownFiles() {
  const files = [join(root, "README.md")];
  const docs = join(root, "docs");
  for (const f of readdirSync(docs, { recursive: true })) {
    if (String(f).endsWith(".md")) files.push(join(docs, String(f)));
  }
  files.sort();
  return only.length ? files.filter((f) => only.includes(f)) : files;
}

/** A hidden comment ending on line `end` (0-based) and starting at or above it: its lines. */
function commentEndingAt(lines, end) {
  if (!lines[end].trimEnd().endsWith("-->")) return undefined;
  for (let i = end; i >= 0; i--) if (lines[i].trimStart().startsWith("<!--")) return { start: i, end };
  return undefined;
}

/**
 * The blocks of one page: { file, fenceLine (1-based), code, flags, hidden (the marker's code),
 * reason (of a skip) }; each code line with its Markdown line.
 */
function extract(file) {
  const text = readFileSync(file, "utf8");
  const lines = text.split("\n");
  const rel = relative(root, file);
  const problems = [];
  let prelude;
  const blocks = [];
  const curlBlocks = [];
  for (let i = 0; i < lines.length; i++) {
    const trimmed = lines[i].trim();
    if (trimmed === "<!-- snippet-prelude") {
      if (prelude) problems.push(`${rel}:${i + 1}: a second snippet-prelude (one per page)`);
      const code = [];
      let j = i + 1;
      for (; j < lines.length && lines[j].trim() !== "-->"; j++) code.push({ text: lines[j], line: j + 1 });
      if (j === lines.length) problems.push(`${rel}:${i + 1}: snippet-prelude without its closing -->`);
      prelude = code;
      i = j;
      continue;
    }
    const fence = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)/.exec(lines[i]);
    if (!fence) continue;
    const [, indent, marks, lang] = fence;
    let j = i + 1;
    const code = [];
    for (; j < lines.length; j++) {
      const close = /^\s*(`{3,}|~{3,})\s*$/.exec(lines[j]);
      if (close && close[1][0] === marks[0] && close[1].length >= marks.length) break;
      code.push({
        text: lines[j].startsWith(indent) ? lines[j].slice(indent.length) : lines[j].trimStart(),
        line: j + 1,
      });
    }
    const fenceLine = i + 1;
    i = j;
    const shell = SHELL.includes(lang) && code.some((l) => CURL.test(l.text));
    if (lang !== "ts" && lang !== "typescript" && !shell) continue;
    // The marker: a comment on the nearest non-blank line above the fence.
    let above = fenceLine - 2;
    while (above >= 0 && lines[above].trim() === "") above--;
    const comment = above >= 0 ? commentEndingAt(lines, above) : undefined;
    const flags = new Set();
    const hidden = [];
    let reason = "";
    const head = comment && /^\s*<!--\s*snippet:\s*(.*?)\s*(-->)?\s*$/.exec(lines[comment.start]);
    if (head) {
      const words = head[1].split(/\s+/).filter(Boolean);
      for (let w = 0; w < words.length; w++) {
        if (words[w] === "skip") {
          flags.add("skip");
          reason = words.slice(w + 1).join(" ");
          break;
        }
        if (!["fragment", "run"].includes(words[w]))
          problems.push(
            `${rel}:${comment.start + 1}: unknown snippet flag "${words[w]}" (fragment, run, skip <reason>)`,
          );
        else flags.add(words[w]);
      }
      if (flags.has("skip") && !reason) problems.push(`${rel}:${comment.start + 1}: "snippet: skip" needs a reason`);
      for (let k = comment.start + 1; k < comment.end; k++) hidden.push({ text: lines[k], line: k + 1 });
      const last = lines[comment.end].replace(/-->\s*$/, "");
      if (comment.end > comment.start && last.trim()) hidden.push({ text: last, line: comment.end + 1 });
      if (hidden.length && !flags.has("fragment"))
        problems.push(`${rel}:${comment.start + 1}: code in a snippet marker needs "fragment"`);
    }
    if (shell) {
      if (flags.has("run")) problems.push(`${rel}:${comment.start + 1}: a curl block always runs: no "run" flag`);
      curlBlocks.push({ file: rel, fenceLine, code, flags, hidden, reason });
    } else blocks.push({ file: rel, fenceLine, code, flags, hidden, reason });
  }
  for (const b of blocks) b.prelude = b.flags.has("fragment") ? (prelude ?? []) : [];
  if (prelude && !blocks.some((b) => b.flags.has("fragment")))
    problems.push(`${rel}: a snippet-prelude but no "fragment" block uses it`);
  return { blocks, curlBlocks, problems };
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens. */
const slug = (heading) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");

/** A page's text outside fenced blocks (links and headings in code are not links and headings). */
function prose(file) {
  const out = [];
  let fence = null;
  for (const [i, line] of readFileSync(file, "utf8").split("\n").entries()) {
    const m = /^\s*(`{3,}|~{3,})/.exec(line);
    if (m && (fence === null || (m[1][0] === fence[0] && m[1].length >= fence.length))) {
      fence = fence === null ? m[1] : null;
      continue;
    }
    if (fence === null) out.push({ line: i + 1, text: line });
  }
  return out;
}

function anchorsOf(file) {
  const seen = new Map();
  const anchors = new Set();
  for (const { text } of prose(file)) {
    const h = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(text);
    if (!h) continue;
    const base = slug(h[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/**
 * Every relative link of the pages resolves (file and #anchor), and the docs index
 * (docs/README.md) links every page of docs/.
 */
function checkLinks(files) {
  const problems = [];
  const anchors = new Map();
  const anchorsFor = (f) => anchors.get(f) ?? anchors.set(f, anchorsOf(f)).get(f);
  for (const file of files) {
    const rel = relative(root, file);
    for (const { line, text } of prose(file)) {
      for (const m of text.replace(/`[^`]*`/g, "").matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
        const target = m[1];
        if (/^[a-z][a-z+.-]*:/i.test(target)) continue; // https:, mailto:
        const [path, anchor] = target.split("#");
        const to = path ? resolve(dirname(file), decodeURIComponent(path)) : file;
        if (!existsSync(to)) {
          problems.push(`${rel}:${line}: link to ${target}: no such file`);
          continue;
        }
        if (anchor && to.endsWith(".md") && !anchorsFor(to).has(anchor))
          problems.push(`${rel}:${line}: link to ${target}: no such heading in ${relative(root, to)}`);
      }
    }
  }
  const index = join(root, "docs", "README.md");
  if (existsSync(index)) {
    const linked = new Set();
    for (const { text } of prose(index))
      for (const m of text.matchAll(/\]\(([^)#\s]+)/g)) linked.add(resolve(dirname(index), m[1]));
    for (const f of readdirSync(join(root, "docs"), { recursive: true })) {
      const page = join(root, "docs", String(f));
      if (page.endsWith(".md") && page !== index && !linked.has(page))
        problems.push(`docs/README.md does not link docs/${f}: add it to the index`);
    }
  }
  return problems;
}

/**
 * No page of docs/ nor the README names an issue number ("issue 62", "#62") or a commit id (7 to 40
 * hex characters that name a commit of this repository): the pages are for users, to whom neither
 * means anything; development notes belong in commit messages. Code blocks count too, except that
 * in a `text` block (a program's output, such as the README's journal listing "#6 expire") a bare
 * "#6" is a sequence number; "issue 6" is still caught there.
 */
const ISSUE_NUMBER = /\bissues?[\s-]+#?\d+|(?<![\w&/#-])#\d+\b/gi;
const ISSUE_WORD = /\bissues?[\s-]+#?\d+/gi;
const HEX_WORD = /\b[0-9a-f]{7,40}\b/gi;

/** Which of `words` name a commit of this checkout (git cat-file); undefined without git history. */
function commitsAmong(words) {
  try {
    const shallow = execFileSync("git", ["rev-parse", "--is-shallow-repository"], {
      cwd: root,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    if (shallow.trim() !== "false") return undefined;
    if (words.length === 0) return new Set();
    const out = execFileSync("git", ["cat-file", "--batch-check=%(objecttype)"], {
      cwd: root,
      input: words.map((w) => `${w}^{commit}`).join("\n") + "\n",
      encoding: "utf8",
    }).split("\n");
    return new Set(words.filter((_, i) => out[i] === "commit"));
  } catch {
    return undefined;
  }
}

/** Each issue number and commit id of `pages` ({ name, text }): "name:line: what". */
function findReferences(pages) {
  const found = [];
  const hex = [];
  for (const { name, text } of pages) {
    let output = false; // inside a ```text block
    for (const [i, line] of text.split("\n").entries()) {
      const fence = /^\s*```\s*(\S*)/.exec(line);
      if (fence) output = !output && fence[1] === "text";
      for (const m of line.matchAll(output ? ISSUE_WORD : ISSUE_NUMBER))
        found.push(`${name}:${i + 1}: names an issue ("${m[0].trim()}")`);
      for (const m of line.matchAll(HEX_WORD)) hex.push({ where: `${name}:${i + 1}`, word: m[0] });
    }
  }
  const commits = commitsAmong([...new Set(hex.map((h) => h.word))]);
  if (commits === undefined) return { found, commitsChecked: false };
  for (const h of hex) if (commits.has(h.word)) found.push(`${h.where}: names a commit (${h.word})`);
  return { found, commitsChecked: true };
}

/** The pages' references, after checking on a sample that both kinds are caught here. */
function checkReferences(files) {
  let head = "";
  try {
    head = execFileSync("git", ["rev-parse", "--short=7", "HEAD"], {
      cwd: root,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    // not a git checkout (an unpacked tarball): issue numbers only
  }
  const sample = findReferences([
    {
      name: "sample",
      text: `As issue 62 said (#62), fixed in ${head || "0000000"}.\nEd25519, 3600000, #fff, [x](#step-2)\n\`\`\`text\n  #6 expire   balance after 100\n\`\`\``,
    },
  ]);
  const expected = sample.commitsChecked ? 3 : 2;
  if (sample.found.length !== expected || sample.found.some((f) => /^sample:[24]:/.test(f)))
    fail(`the reference check is broken: on its sample it found\n  ${sample.found.join("\n  ")}`);
  if (!sample.commitsChecked)
    console.warn("check-docs: warning: no full git history here, so commit ids in the pages are not looked for");
  return findReferences(files.map((f) => ({ name: relative(root, f), text: readFileSync(f, "utf8") }))).found;
}

/**
 * No page of docs/ nor the README narrates the package's history ("before this change", "no
 * longer", "used to", "previously", "now does", "as of this release", "earlier releases", "was
 * changed"): a page says what is. A phrase that describes what is — a state that ends ("a replica
 * that no longer accepts connections"), a user's own history — is allowed by an entry of
 * NARRATION_ALLOWED: the page, a piece of the line that holds the phrase, and why it stays. An entry
 * that matches no line fails the check, so the list only holds what is still there.
 */
const NARRATION =
  /\b(?:before this (?:change|release)|no longer|(?<!\b(?:is|are|be|been|being|was|were|gets?|got)\s)used to|previously|(?<!\b(?:after|before|until|than|from|to|at|of)\s)now (?:does|is|has)|as of this release|(?:earlier|previous) (?:releases?|versions?)|(?:was|were) changed)\b/gi;
const NARRATION_ALLOWED = [];

/** Each phrase of `pages` ({ name, text }) that narrates history and `allowed` does not allow. */
function findNarration(pages, allowed) {
  const found = [];
  const used = new Set();
  for (const { name, text } of pages) {
    for (const [i, line] of text.split("\n").entries()) {
      for (const m of line.matchAll(NARRATION)) {
        const entry = allowed.find(
          (a) => a.page === name && line.includes(a.text) && a.text.toLowerCase().includes(m[0].toLowerCase()),
        );
        if (entry) used.add(entry);
        else found.push(`${name}:${i + 1}: "${m[0]}"`);
      }
    }
  }
  for (const a of allowed)
    if (!used.has(a) && pages.some((p) => p.name === a.page))
      found.push(`NARRATION_ALLOWED: "${a.text}" matches nothing in ${a.page}: remove the entry`);
  return found;
}

/** The pages' narration, after checking on a sample that it is caught and allowed as it should be. */
function checkNarration(files) {
  const sample = findNarration(
    [
      {
        name: "sample",
        text: "Before this change it used to fail.\nThe key is used to sign; the plan no longer exists.",
      },
    ],
    [{ page: "sample", text: "the plan no longer exists", why: "a state" }],
  );
  if (sample.length !== 2 || sample.some((f) => !f.startsWith("sample:1:")))
    fail(`the narration check is broken: on its sample it found\n  ${sample.join("\n  ")}`);
  return findNarration(
    files.map((f) => ({ name: relative(root, f), text: readFileSync(f, "utf8") })),
    NARRATION_ALLOWED,
  );
}

function fail(message) {
  console.error(`\ncheck-docs: ${message}`);
  process.exit(1);
}

// 1. The blocks.
const files = markdownFiles();
const blocks = [];
const problems = [];
const curlBlocks = [];
for (const file of files) {
  const page = extract(file);
  blocks.push(...page.blocks);
  curlBlocks.push(...page.curlBlocks);
  problems.push(...page.problems);
}
if (problems.length) fail(`snippet markers:\n  ${problems.join("\n  ")}\nSee ${CONVENTION}.`);
const links = checkLinks([
  ...files,
  ...[join(root, "CONTRIBUTING.md"), join(root, "CHANGELOG.md")].filter(
    (f) => existsSync(f) && (!only.length || only.includes(f)),
  ),
]);
if (links.length) fail(`links:\n  ${links.join("\n  ")}`);
const references = checkReferences(files);
if (references.length)
  fail(
    `issue numbers and commit ids (the pages are for users; say what happens and why, or leave it to the commit message):\n  ${references.join("\n  ")}`,
  );
const narration = checkNarration(files);
if (narration.length)
  fail(
    `history narrated (a page says what is; a legitimate use goes into NARRATION_ALLOWED in this script):\n  ${narration.join("\n  ")}`,
  );
if (noSnippets) {
  console.log(
    `check-docs: markers, links, references and wording of ${files.length} pages checked; snippets not checked`,
  );
  process.exit(0);
}
if (blocks.length === 0 && curlBlocks.length === 0) {
  if (!only.length) fail("no TypeScript block found");
  console.log("check-docs: links and references checked; no TypeScript or curl block in the pages given");
  process.exit(0);
}

// 2. The package as it ships, in a fresh project.
if (!existsSync(join(root, "dist", "index.js")) || !existsSync(join(root, "dist", "index.d.ts")))
  fail("no complete dist/: run `npm run build` first");
const newestSource = (dir) =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .reduce((max, e) => Math.max(max, statSync(join(e.parentPath ?? e.path, e.name)).mtimeMs), 0);
if (newestSource(join(root, "src")) > statSync(join(root, "dist", "index.js")).mtimeMs) {
  console.warn("check-docs: warning: src/ changed after the last build; the blocks are checked against dist/ as built");
}
const packStarted = Date.now();
const work = mkdtempSync(join(tmpdir(), "cm-docs-"));
process.on("exit", () => {
  if (!keep) rmSync(work, { recursive: true, force: true });
});
const tarball = execFileSync("npm", ["pack", "--silent", "--ignore-scripts", "--pack-destination", work], {
  cwd: root,
  encoding: "utf8",
})
  .trim()
  .split("\n")
  .pop();
const modules = join(work, "node_modules");
const pkgDir = join(modules, "credit-management");
mkdirSync(pkgDir, { recursive: true });
execFileSync("tar", ["-xzf", join(work, tarball), "-C", pkgDir, "--strip-components=1"]);
// Its dependencies and the peers and frameworks the pages use: this repository's installed ones.
for (const name of readdirSync(join(root, "node_modules"))) {
  if (name.startsWith(".") || name === "credit-management") continue;
  symlinkSync(join(root, "node_modules", name), join(modules, name), "junction");
}
writeFileSync(join(work, "package.json"), JSON.stringify({ name: "docs-consumer", private: true, type: "module" }));
const packed = Date.now();

// 3. One module per block; each generated line remembers its Markdown line.
const srcDir = join(work, "snippets");
mkdirSync(srcDir);
const checked = blocks.filter((b) => !b.flags.has("skip"));
for (const [n, b] of checked.entries()) {
  b.name = `${b.file.replace(/[^\w]+/g, "-").replace(/-md$/, "")}-L${b.fenceLine}`;
  b.path = join(srcDir, `${b.name}.ts`);
  b.map = [
    ...b.prelude.map((l) => ({ ...l, where: "prelude" })),
    ...b.hidden.map((l) => ({ ...l, where: "marker" })),
    ...b.code.map((l) => ({ ...l, where: "block" })),
  ];
  writeFileSync(b.path, `${b.map.map((l) => l.text).join("\n")}\nexport {};\n`);
  b.index = n;
}

// 4. Type-check (and emit, for the runnable ones) as a strict consumer.
const program = ts.createProgram(
  checked.map((b) => b.path),
  {
    strict: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.Node16,
    moduleResolution: ts.ModuleResolutionKind.Node16,
    types: ["node"],
    typeRoots: [join(modules, "@types")],
    skipLibCheck: true,
    rootDir: srcDir,
    outDir: join(work, "out"),
    noEmitOnError: true,
  },
);
const diagnostics = ts.getPreEmitDiagnostics(program);
if (diagnostics.length) {
  const byPath = new Map(checked.map((b) => [resolve(b.path), b]));
  const found = [];
  for (const d of diagnostics) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, "\n    ");
    const b = d.file && byPath.get(resolve(d.file.fileName));
    if (!b) {
      found.push({
        file: d.file?.fileName ?? "",
        line: 0,
        text: `${d.file ? `${d.file.fileName}: ` : ""}TS${d.code}: ${message}`,
      });
      continue;
    }
    const at = b.map[d.file.getLineAndCharacterOfPosition(d.start ?? 0).line] ?? { line: b.fenceLine, where: "block" };
    const from =
      at.where === "block"
        ? ""
        : ` (in the ${at.where === "prelude" ? "page's snippet-prelude" : "snippet marker"}, for the block at line ${b.fenceLine})`;
    found.push({ file: b.file, line: at.line, text: `${b.file}:${at.line}${from}: TS${d.code}: ${message}` });
  }
  found.sort((x, y) => x.file.localeCompare(y.file) || x.line - y.line);
  const out = [...new Set(found.map((f) => f.text))];
  fail(
    `${out.length} type error(s) in the documentation's TypeScript blocks:\n  ${out.join("\n  ")}\n\n` +
      `A block is a complete module (its imports included) unless it is marked; fragments, runnable blocks\n` +
      `and skipped ones are explained in ${CONVENTION}. Fix the docs where they are wrong.`,
  );
}
const checkedAt = Date.now();
const emitted = program.emit();
if (emitted.emitSkipped) fail("TypeScript emitted nothing");

// 5. Run the runnable blocks, each in an empty folder, two at a time.
const runnable = noRun ? [] : checked.filter((b) => b.flags.has("run"));
const env = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^(CREDIT_|DATABASE_URL|MONGO|REDIS|PG|MYSQL)/.test(k)),
);
function run(b) {
  const cwd = join(work, "run", b.name);
  mkdirSync(cwd, { recursive: true });
  return new Promise((done) => {
    const child = spawn(process.execPath, [join(work, "out", `${b.name}.js`)], {
      cwd,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (c) => {
      output += c;
    });
    child.stderr.on("data", (c) => {
      output += c;
    });
    const timer = setTimeout(() => {
      output += `\n(killed after ${RUN_TIMEOUT_MS / 1000} s: a runnable block must finish by itself)`;
      child.kill("SIGKILL");
    }, RUN_TIMEOUT_MS);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      done({ b, ok: code === 0, code: code ?? signal, output });
    });
  });
}
const results = [];
const queue = [...runnable];
await Promise.all(
  [0, 1].map(async () => {
    for (let b; (b = queue.shift());) results.push(await run(b));
  }),
);
const curlStarted = Date.now();
const failed = results.filter((r) => !r.ok);
if (failed.length) {
  fail(
    `${failed.length} runnable block(s) failed:\n${failed.map((r) => `  ${r.b.file}:${r.b.fenceLine} exited with ${r.code}:\n    ${r.output.trim().split("\n").join("\n    ")}`).join("\n")}`,
  );
}

// 6. The curl blocks, in page order, against one `credit-management serve` of the packed package.
const curlRun = noRun ? [] : curlBlocks.filter((b) => !b.flags.has("skip"));
const curlResults = curlRun.length ? await runCurlBlocks(curlRun) : [];
const curlFailed = curlResults.filter((r) => !r.ok);
if (curlFailed.length) {
  fail(
    `${curlFailed.length} curl block(s) failed against credit-management serve:\n${curlFailed.map((r) => `  ${r.b.file}:${r.b.fenceLine} exited with ${r.code}:\n    ${r.output.trim().split("\n").join("\n    ")}`).join("\n")}\n` +
      `Each curl block runs with bash against a fresh serve; see ${CONVENTION}.`,
  );
}

const skipped = [...blocks, ...curlBlocks].filter((b) => b.flags.has("skip"));
for (const b of skipped) console.log(`skipped ${b.file}:${b.fenceLine}: ${b.reason}`);
const pages = new Set(blocks.map((b) => b.file)).size;
console.log(
  `check-docs: ${checked.length} TypeScript blocks of ${pages} pages type-check against the packed package` +
    `${noRun ? "" : `, ${results.length} ran, ${curlResults.length} curl blocks ran against serve`}${skipped.length ? `, ${skipped.length} skipped` : ""}`,
);
const s = (ms) => `${(ms / 1000).toFixed(1)} s`;
console.log(
  `check-docs: ${s(Date.now() - started)} (pack and install ${s(packed - packStarted)}, type-check ${s(checkedAt - packed)}, runs ${s(curlStarted - checkedAt)}, curl blocks ${s(Date.now() - curlStarted)})`,
);

/**
 * Runs the curl blocks against a `credit-management serve` of the packed package, started here in
 * an empty folder: its default SQLite store, a free port, customer tokens on. The blocks run in
 * page order, each as a bash script (`set -euo pipefail`) after its marker's code, with
 * `localhost:8080` pointed at that port and these variables set: ADMIN_KEY (an admin key), KEY and
 * ALICE_KEY (a key of the user alice). `curl` fails on an answer that is not 2xx (its body printed).
 */
async function runCurlBlocks(list) {
  const cwd = join(work, "serve");
  mkdirSync(cwd, { recursive: true });
  const bin = join(pkgDir, JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8")).bin["credit-management"]);
  const serveEnv = {
    ...env,
    CREDIT_SQLITE_PATH: join(cwd, "credits.sqlite"),
    CREDIT_CUSTOMER_TOKEN_SECRET: "check-docs-customer-token-secret-0123456789",
  };
  const key = (role) =>
    execFileSync(process.execPath, [bin, "keys", "create", "--role", role], {
      cwd,
      env: serveEnv,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    })
      .trim()
      .split("\n")
      .pop();
  const keys = { ADMIN_KEY: key("admin"), ALICE_KEY: key("user:alice") };
  keys.KEY = keys.ALICE_KEY;
  const server = spawn(process.execPath, [bin, "serve", "--port", "0", "--host", "127.0.0.1"], {
    cwd,
    env: serveEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  server.stderr.on("data", (c) => (log += c));
  const port = await new Promise((done, failed) => {
    const timer = setTimeout(() => failed(new Error(`serve did not start in 30 s:\n${log}`)), 30_000);
    server.stdout.on("data", (c) => {
      log += c;
      const line = log.split("\n").find((l) => l.includes('"msg":"serving"'));
      if (line) {
        clearTimeout(timer);
        done(JSON.parse(line).port);
      }
    });
    server.on("exit", (code) => failed(new Error(`serve exited with ${code} before serving:\n${log}`)));
  }).catch((e) => fail(`curl blocks: ${e.message}`));
  const out = [];
  try {
    for (const b of list) {
      const script = [
        "set -euo pipefail",
        'curl() { command curl --silent --show-error --fail-with-body --max-time 10 "$@"; echo; }',
        ...b.hidden.map((l) => l.text),
        ...b.code.map((l) => l.text),
      ]
        .join("\n")
        .replaceAll("localhost:8080", `127.0.0.1:${port}`);
      out.push(
        await new Promise((done) => {
          const child = spawn("bash", ["-c", script], {
            cwd,
            env: { ...env, ...keys },
            stdio: ["ignore", "pipe", "pipe"],
          });
          let output = "";
          child.stdout.on("data", (c) => (output += c));
          child.stderr.on("data", (c) => (output += c));
          const timer = setTimeout(() => {
            output += `\n(killed after ${RUN_TIMEOUT_MS / 1000} s)`;
            child.kill("SIGKILL");
          }, RUN_TIMEOUT_MS);
          child.on("close", (code, signal) => {
            clearTimeout(timer);
            done({ b, ok: code === 0, code: code ?? signal, output });
          });
        }),
      );
    }
  } finally {
    server.kill("SIGTERM");
  }
  return out;
}
