#!/usr/bin/env node
/* global process, console */
// Fails when a file under src/ is over 900 lines and CONTRIBUTING.md ("Files over 900 lines", in
// "Rooms") does not list it with the reason it stays one file. A file that long is usually a room
// that mixes concerns: split it by what it does, or say why not. Run by `npm run lint`.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative, resolve } from "node:path";

const LIMIT = 900;
const repo = process.cwd();
const HEADING = "### Files over 900 lines";

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : path.endsWith(".ts") ? [path] : [];
  });
}

// The table under the heading: | `src/…` | reason |, up to the next heading.
const contributing = readFileSync(resolve(repo, "CONTRIBUTING.md"), "utf8");
const start = contributing.indexOf(HEADING);
const listed = new Map();
if (start >= 0) {
  const rest = contributing.slice(start + HEADING.length);
  const end = rest.search(/^#{1,3} /m);
  for (const line of (end < 0 ? rest : rest.slice(0, end)).split("\n")) {
    const m = /^\|\s*`(src\/[^`]+)`\s*\|\s*(.*?)\s*\|\s*$/.exec(line);
    if (m && m[2] !== "") listed.set(m[1], m[2]);
  }
}

const over = [];
for (const file of files(resolve(repo, "src"))) {
  const text = readFileSync(file, "utf8");
  const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
  const name = relative(repo, file);
  if (lines > LIMIT && !listed.has(name)) over.push(`${name}: ${lines} lines`);
  if (lines <= LIMIT && listed.has(name))
    console.log(`check-sizes: ${name} is ${lines} lines now: drop it from CONTRIBUTING.md`);
}
if (over.length > 0) {
  console.error(
    `check-sizes: ${over.length} files under src/ over ${LIMIT} lines, not in CONTRIBUTING.md ("${HEADING.slice(4)}"):`,
  );
  for (const o of over) console.error(`  ${o}`);
  console.error("  split each by what it does, or list it there with the reason it is one file");
  process.exitCode = 1;
} else {
  console.log(`check-sizes: no file under src/ over ${LIMIT} lines but the ${listed.size} listed in CONTRIBUTING.md`);
}
