#!/usr/bin/env node
/* global process, console, URL */
// Fails on a swallowed promise in src/ — `.catch(() => undefined)` or `.catch(() => {})` — unless
// the line above says why ignoring the error is safe (a comment, or a swallow on the line above
// that such a comment covers). Handle or log the error instead where it matters
// (`warnOnFailure` in src/core/logger.ts). Run by `npm run lint`.
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("../src/", import.meta.url).pathname;
const SWALLOW = /\.catch\(\(\)\s*=>\s*(?:undefined|\{\s*\})\)/;
const COMMENT = /^\s*(?:\/\/|\*|\/\*)|\*\/\s*$/;

function* files(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (/\.(?:ts|mts|cts|js|mjs)$/.test(e.name)) yield p;
  }
}

const bare = [];
let count = 0;
for (const file of files(root)) {
  const lines = readFileSync(file, "utf8").split("\n");
  let covered = false; // the line above is a swallow the comment above it covers
  lines.forEach((line, i) => {
    if (!SWALLOW.test(line)) {
      covered = false;
      return;
    }
    count++;
    const above = lines[i - 1] ?? "";
    covered = covered || COMMENT.test(above) || /\/\/.*$/.test(line.slice(line.search(SWALLOW)));
    if (!covered) bare.push(`src/${relative(root, file)}:${i + 1}: ${line.trim()}`);
  });
}
if (bare.length > 0) {
  console.error(`check-catches: ${bare.length} swallowed promise(s) with no comment above saying why it is safe:`);
  for (const b of bare) console.error(`  ${b}`);
  process.exit(1);
}
console.log(`check-catches: each of the ${count} swallowed promises in src/ says why it is safe`);
