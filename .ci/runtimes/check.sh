#!/usr/bin/env bash
# The package on other runtimes than the machine's Node.js, each installed from the npm registry
# by .ci/runtimes/package.json (its own lock; not part of what users install). Called by .ci/run;
# docs/runtimes.md says what each check proves and what it leaves out.
#
#   check.sh install          npm install here (from npm's cache when it has them), the lock unchanged;
#                             a copy of the installed node_modules is kept on the machine by the
#                             lock's hash (~/.cache/credit-management-ci) for the next clean clone
#   check.sh node 22|24       the package checks (scripts/check-tarball.sh) on that Node.js, the
#                             SQLite store with better-sqlite3 13 (its Node-API binary is in the
#                             package: nothing to compile; 12 aborts the process on Node 24.19 and later)
#   check.sh suite 24 [files] the whole test suite or some files (not run by .ci/run, which runs the
#                             suite once, with npm test: for a change that may behave differently
#                             on a newer Node; vitest run, the repository's config and the
#                             environment it is given) on that Node.js, in a temporary copy of
#                             the repository whose node_modules links to the repository's except
#                             better-sqlite3, which is 13 from here (the committed tree is not touched)
#   check.sh node22 node24 bun deno
#                             the packed package in a fresh project on Node 22 / 24, Bun and/or Deno:
#                             the contract suite (contract.mjs) on memory, SQLite and PostgreSQL
#                             (SQLite: on Node through better-sqlite3 13; on Bun
#                             through bun:sqlite, the default there, and through better-sqlite3 13
#                             asked for; on Deno through better-sqlite3 13), examples/bun.ts /
#                             examples/deno.ts over HTTP on each; ledger-close.mjs: a manager closed
#                             right after its operations has every line in its ledger file; on Bun,
#                             sqlite-file.mjs: a file moves between bun:sqlite and better-sqlite3
#                             (under Bun, then Node 24)
# A runtime that cannot be had fails the check. PostgreSQL: CREDIT_PG_URL (required when CI is set).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
modules="$here/node_modules"

# npm install in a consumer project, at most 5 minutes a try, twice: npm 11 has been seen to hang
# after reading everything from its cache (no socket open, waiting forever); a second try goes on.
npm_install() {
  local try
  for try in 1 2; do
    timeout 300 npm install "$@" && return 0
    echo "npm install $* failed or hung (try $try of 2)" >&2
  done
  return 1
}

nodedir() {
  local dir="$modules/node$1"
  [ -x "$dir/bin/node" ] || { echo "Node $1 is not installed in $modules (run: $0 install)" >&2; exit 1; }
  echo "$dir"
}

case "${1:-}" in
  install)
    cd "$here"
    # The machine keeps what it installed, by the hash of package.json and the lock: a clean clone
    # copies that node_modules instead of installing the runtimes again. It was kept only after
    # npm install left exactly this lock unchanged, so the check below holds for it as it is.
    key="$(cat package.json package-lock.json | sha256sum | cut -c1-16)"
    kept="${XDG_CACHE_HOME:-$HOME/.cache}/credit-management-ci/runtimes-$key"
    if [ ! -e node_modules ] && [ -d "$kept/node_modules" ]; then
      echo "node_modules as installed from this lock before, kept in $kept"
      cp -a "$kept/node_modules" node_modules
    else
      # No bin links: both Node.js packages name their binary `node`; the checks call each by path.
      npm install --no-audit --no-fund --prefer-offline --no-bin-links
    fi
    if ! git -C "$repo" diff --quiet -- .ci/runtimes/package-lock.json; then
      echo ".ci/runtimes/package-lock.json is out of date with its package.json: run npm install there and commit it" >&2
      exit 1
    fi
    if [ ! -d "$kept/node_modules" ]; then
      mkdir -p "$kept"
      rm -rf "$kept/node_modules.partial"
      cp -a node_modules "$kept/node_modules.partial" && mv "$kept/node_modules.partial" "$kept/node_modules"
    fi
    echo "Node $("$modules/node22/bin/node" -v), Node $("$modules/node24/bin/node" -v), Bun $("$modules/bun/bin/bun.exe" --version), $("$modules/@deno/linux-x64-glibc/deno" --version | head -n 1)"
    ;;
  node)
    dir="$(nodedir "$2")"
    PATH="$dir/bin:$PATH" CM_BETTER_SQLITE3_VERSION="$(node -p "require('$modules/better-sqlite3/package.json').version")" \
      bash "$repo/scripts/check-tarball.sh"
    ;;
  suite)
    dir="$(nodedir "$2")"
    SECONDS=0
    work="$(mktemp -d "${TMPDIR:-/tmp}/cm-suite-XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    # The repository as it is on disk (tracked and untracked files git does not ignore) and its
    # build (dist/: tests import the built package); not node_modules, linked below.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - dist) |
      tar -xf - -C "$work"
    # node_modules: a link to each of the repository's packages (Node.js resolves them to where
    # they lie), except better-sqlite3: 13 from here, whose Node-API binary loads on every Node.js
    # from 20 on (12's, built for one Node.js ABI, aborts the process on Node 24.19 and later).
    # Not .vite: vitest's cache for this run stays in the copy.
    mkdir "$work/node_modules"
    for entry in "$repo/node_modules"/* "$repo/node_modules/.bin"; do
      [ "$(basename "$entry")" = better-sqlite3 ] || ln -s "$entry" "$work/node_modules/"
    done
    ln -s "$modules/better-sqlite3" "$work/node_modules/better-sqlite3"
    cd "$work"
    # This Node.js first on PATH: the suite's child processes run process.execPath (the one vitest
    # runs on), and anything that runs `node` or a `#!/usr/bin/env node` script finds it first.
    export PATH="$dir/bin:$PATH"
    echo "--- the test suite on Node $(node -v) (node on PATH: $(command -v node))"
    # Every native addon in node_modules loads on this Node.js (better-sqlite3 by opening a database).
    # A package may ship builds for other C libraries beside ours (msgpackr-extract, from bullmq,
    # has *.musl.node next to *.glibc.node and picks one at run time): those are not for this
    # machine and are named, not loaded.
    find "$repo/node_modules" -name '*.node' -not -path "$repo/node_modules/better-sqlite3/*" -print0 |
      xargs -0 -r -n 1 node -e '
        const file = process.argv[1];
        const glibc = process.report.getReport().header.glibcVersionRuntime !== undefined;
        if (glibc && /[.-]musl[.-]/.test(file)) console.log("not for glibc (skipped):", file);
        else { require(file); console.log("loads:", file); }'
    node -e 'const D = require("better-sqlite3"); const db = new D(":memory:");
      console.log("loads: better-sqlite3", require("better-sqlite3/package.json").version, "(SQLite", db.prepare("select sqlite_version() v").get().v + ")")'
    status=0
    CI=1 node node_modules/vitest/vitest.mjs run "${@:3}" || status=$?
    if [ -f .ci/test-results.json ]; then
      node -e '
        const r = require("./.ci/test-results.json");
        const skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
        console.log(`\nNode ${process.version}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
        if (r.numTotalTests === 0) { console.error("no test ran"); process.exit(1); }
      ' || status=1
    else
      status=1
    fi
    echo "suite on Node $(node -v): $([ $status = 0 ] && echo ok || echo failed) (${SECONDS} s)"
    exit $status
    ;;
  node22 | node24 | bun | deno | workerd | next)
    if [ -z "${CREDIT_PG_URL:-}" ] && [ -n "${CI:-}" ]; then
      echo "CREDIT_PG_URL is not set: the PostgreSQL checks cannot run" >&2
      exit 1
    fi
    # These checks run memory, SQLite and PostgreSQL; the consumer project installs no MongoDB
    # driver, so a CREDIT_MONGO_URI from .ci/run must not pick the MongoDB store for them.
    unset CREDIT_MONGO_URI
    SECONDS=0
    work="$(mktemp -d "${TMPDIR:-/tmp}/cm-runtimes-XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    tarball="$(cd "$repo" && npm pack --silent --ignore-scripts --pack-destination "$work" | tail -n 1)"
    version() { node -p "require('$1/package.json').version"; }
    cd "$work"
    echo '{ "name": "consumer", "private": true, "type": "module" }' > package.json
    npm_install --no-audit --no-fund --prefer-offline --silent "./$tarball" \
      "pg@$(version "$repo/node_modules/pg")" "fast-check@$(version "$repo/node_modules/fast-check")" \
      "expect@$(version "$modules/expect")"
    # better-sqlite3 13: Node-API, its binaries inside the package (no build: no install script).
    npm_install --no-audit --no-fund --prefer-offline --silent --ignore-scripts "better-sqlite3@$(version "$modules/better-sqlite3")"
    cp "$here/contract.mjs" "$here/sqlite-file.mjs" "$here/ledger-close.mjs" "$repo/examples/bun.ts" "$repo/examples/deno.ts" .
    mkdir tmp
    export TMPDIR="$work/tmp" NO_COLOR=1 DENO_DIR="$work/deno-dir"
    bun="$modules/bun/bin/bun.exe"
    deno="$modules/@deno/linux-x64-glibc/deno"
    # What Deno needs (docs/runtimes.md): env (configuration; pino reads its own at import),
    # sys=hostname (pino's log lines carry it), net (PostgreSQL, the server), read/write (the ledger
    # file, journal archives, the SQLite file: here only under the temporary folder), and for the
    # SQLite store ffi (better-sqlite3's binary) and sys=cpus,networkInterfaces (asked for when it loads).
    deno_run() {
      "$deno" run --no-prompt --allow-env --allow-sys=hostname,cpus,networkInterfaces --allow-net=127.0.0.1 \
        --allow-read="$work" --allow-write="$TMPDIR" --allow-ffi="$work/node_modules/better-sqlite3" "$@"
    }
    # Deno is given the npm: specifiers a Deno program writes (resolved from node_modules here).
    sed -i 's#from "credit-management#from "npm:credit-management#' deno.ts
    sed 's#from "credit-management#from "npm:credit-management#' contract.mjs > contract-deno.mjs
    sed 's#from "credit-management#from "npm:credit-management#' ledger-close.mjs > ledger-close-deno.mjs
    schema="cm_rt_example_$$"
    example() { # runtime, memory|sqlite|postgres: runs the example's demo and checks what it printed
      local out
      out="$(
        case "$2" in
          memory) unset CREDIT_PG_URL ;;
          sqlite) unset CREDIT_PG_URL; export CREDIT_SQLITE_PATH="$TMPDIR/example-$1.db" ;;
          postgres) export CREDIT_PG_SCHEMA="${schema}_$1" ;;
        esac
        if [ "$1" = bun ]; then "$bun" bun.ts; else deno_run deno.ts; fi
      )"
      echo "$out"
      for expected in "POST /api/summarize: 200, X-Credits-Deducted: 12" "user-1 /api/chat: held 50, committed 15" \
        'POST /api/chat (SSE): 200, "data: Credits' "GET /credits/balance: 200, balance 973" "POST /api/summarize (no credits): 402"; do
        grep -qF "$expected" <<<"$out" || { echo "examples/$1.ts did not print: $expected" >&2; exit 1; }
      done
    }
    # Whether the process bunx ($1) started catches SIGTERM: the bin's first line (src/cli/index.ts)
    # holds it from then on. Linux: SigCgt in /proc, bit 14 (signal 15).
    bin_holds_sigterm() {
      local child mask
      child="$(pgrep -P "$1" | head -n 1)"
      [ -n "$child" ] || return 1
      mask="$(awk '/^SigCgt:/ { print $2 }' "/proc/$child/status" 2>/dev/null)"
      [ -n "$mask" ] && (((16#$mask >> 14) & 1))
    }
    for runtime in "$@"; do
      case "$runtime" in
        node22 | node24)
          # The whole test suite runs once, on the machine's Node (npm test in .ci/run); on these
          # lines the contract suite and a ledger closed right after its operations, on the
          # packed package with better-sqlite3 13 (docs/runtimes.md).
          node="$(nodedir "${runtime#node}")/bin/node"
          echo "--- Node $("$node" -v)"
          "$node" contract.mjs
          "$node" ledger-close.mjs
          ;;
        bun)
          echo "--- Bun $("$bun" --version)"
          "$bun" -e 'const m = await import("credit-management"); if (!m.createCreditManager) throw new Error("ESM import")'
          "$bun" -e 'const m = require("credit-management/http"); if (!m.creditMetering) throw new Error("CJS require")'
          echo "ESM import and CJS require of the package"
          "$bun" contract.mjs
          "$bun" ledger-close.mjs
          # One file, both drivers: written by bun:sqlite, read, audited and written on by
          # better-sqlite3, and the other way round (under Bun); then both read on Node.js.
          mkdir sqlite-file
          "$bun" sqlite-file.mjs sqlite-file
          "$(nodedir 24)/bin/node" sqlite-file.mjs sqlite-file
          example bun memory
          example bun sqlite
          [ -z "${CREDIT_PG_URL:-}" ] || example bun postgres
          # `bunx --bun credit-management serve` (--bun: Bun runs the bin, not the node of its
          # shebang) on its default store, SQLite: an admin key, a grant and a balance over HTTP.
          # Under Bun it opens the file with bun:sqlite: better-sqlite3 is moved out of the way.
          mv node_modules/better-sqlite3 better-sqlite3.aside
          export CREDIT_SQLITE_PATH="$TMPDIR/serve.db"
          key="$(env -u CREDIT_PG_URL "$bun" x --bun credit-management keys create --role admin | grep -o 'cmk_[A-Za-z0-9_-]*')"
          port=$((20000 + RANDOM % 20000))
          env -u CREDIT_PG_URL CREDIT_PORT=$port CREDIT_HOST=127.0.0.1 CREDIT_LOG_LEVEL=warn "$bun" x --bun credit-management serve &
          serve=$!
          for _ in $(seq 60); do curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.5; done
          curl -fsS -X POST -H "authorization: Bearer $key" -H "content-type: application/json" -d '{"amount": 40}' \
            "http://127.0.0.1:$port/admin/credits/users/u1/add" >/dev/null
          balance="$(curl -fsS -H "authorization: Bearer $key" "http://127.0.0.1:$port/admin/credits/users/u1/balance")"
          kill "$serve"
          # SIGTERM after a clean drain: exit 0 (docs/service.md, "Exit codes"), under Bun too.
          code=0
          wait "$serve" || code=$?
          [ "$code" = 0 ] || { echo "bunx credit-management serve exited $code on SIGTERM (expected 0)" >&2; exit 1; }
          # The stop, 20 times in a row: SIGTERM to bunx (which passes it to the bin's process) as
          # soon as the bin holds it (its first line ran; the CLI's modules still load), 0.2 s after
          # that, and once it serves, in turn. Each must exit 0 with a "stopped" line. Not at a fixed
          # time after the start: Bun itself takes up to several hundred milliseconds on a busy
          # machine before it runs any of the package's code, and a signal then ends any program by
          # its default action, exit 143 (docs/service.md, "Exit codes").
          for i in $(seq 20); do
            case $((i % 3)) in 1) when=held ;; 2) when=held+0.2 ;; 0) when=ready ;; esac
            # A port the system has just given out free (twenty random picks may hit one in use).
            port="$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')"
            env -u CREDIT_PG_URL CREDIT_PORT=$port CREDIT_HOST=127.0.0.1 CREDIT_LOG_LEVEL=info "$bun" x --bun credit-management serve > stop.log 2>&1 &
            serve=$!
            if [ "$when" = ready ]; then
              for _ in $(seq 60); do curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.5; done
            else
              for _ in $(seq 3000); do bin_holds_sigterm "$serve" && break; sleep 0.01; done
              bin_holds_sigterm "$serve" || { cat stop.log >&2; echo "the bin never caught SIGTERM" >&2; exit 1; }
              [ "$when" = held ] || sleep 0.2
            fi
            # (A serve that already exited is reported below, with its log, not by kill.)
            kill "$serve" 2>/dev/null || true
            code=0
            wait "$serve" || code=$?
            if [ "$code" != 0 ] || ! grep -q '"msg":"stopped"' stop.log; then
              cat stop.log >&2
              echo "bunx credit-management serve, SIGTERM $i of 20 ($when): exit $code (expected 0 and a stopped line)" >&2
              exit 1
            fi
          done
          echo "bunx --bun credit-management serve: SIGTERM 20 times (as soon as the bin holds it, 0.2 s later, once it serves): exit 0, stopped"
          unset CREDIT_SQLITE_PATH
          mv better-sqlite3.aside node_modules/better-sqlite3
          grep -q '"balance":40' <<<"$balance" || { echo "bunx credit-management serve answered: $balance" >&2; exit 1; }
          echo "bunx --bun credit-management serve (SQLite through bun:sqlite, better-sqlite3 not installed): an admin key, a grant, the balance over HTTP: $balance; exit 0 on SIGTERM"
          ;;
        deno)
          echo "--- $("$deno" --version | head -n 1)"
          deno_run contract-deno.mjs
          # Several times: the race it guards against (the writer thread starting after close())
          # is lost by the thread nearly every time on Deno, but not by construction.
          for _ in 1 2 3; do deno_run ledger-close-deno.mjs; done
          example deno memory
          example deno sqlite
          [ -z "${CREDIT_PG_URL:-}" ] || example deno postgres
          ;;
        workerd)
          # examples/cloudflare-worker.ts bundled as wrangler would (workerd/build.mjs), run by
          # workerd itself on PostgreSQL over TCP (pg through cloudflare:sockets), then over HTTP:
          # a grant, a metered JSON route, a metered stream, the balance, a 402, and the refusals.
          [ -n "${CREDIT_PG_URL:-}" ] || { echo "workerd: CREDIT_PG_URL is not set (the Worker's store is PostgreSQL)" >&2; exit 1; }
          workerd="$modules/workerd/bin/workerd"
          echo "--- workerd $("$workerd" --version)"
          mkdir -p worker
          cp "$repo/examples/cloudflare-worker.ts" "$here/workerd/test-worker.mjs" worker/
          NODE_PATH="$modules" node "$here/workerd/build.mjs" worker/test-worker.mjs worker/worker.js
          port=$((20000 + RANDOM % 20000))
          sed -e "s#@PORT@#$port#" -e "s#@PG_URL@#$CREDIT_PG_URL#" -e "s#@PG_SCHEMA@#${schema}_workerd#" \
            "$here/workerd/config.capnp" > worker/config.capnp
          "$workerd" serve worker/config.capnp > worker/workerd.log 2>&1 &
          served=$!
          for _ in $(seq 60); do curl -s "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.25; done
          w() { curl -sS -o worker/body -D worker/headers -w '%{http_code}' "$@"; }
          fail() { kill "$served"; cat worker/workerd.log >&2; echo "workerd: $*" >&2; exit 1; }
          base="http://127.0.0.1:$port"
          code="$(w -X POST -H 'authorization: Bearer admin' -H 'content-type: application/json' -d '{"amount": 1000}' "$base/admin/credits/users/user-1/add")"
          [ "$code" = 200 ] || [ "$code" = 201 ] || fail "grant answered $code: $(cat worker/body)"
          code="$(w -X POST -H 'authorization: Bearer user-1' "$base/api/summarize")"
          [ "$code" = 200 ] && grep -qi '^x-credits-deducted: 12' worker/headers || fail "POST /api/summarize: $code $(cat worker/headers)"
          echo "POST /api/summarize: 200, X-Credits-Deducted: 12"
          code="$(w -X POST -H 'authorization: Bearer user-1' "$base/api/chat")"
          [ "$code" = 200 ] && grep -q 'data: token.' worker/body || fail "POST /api/chat: $code $(cat worker/body)"
          echo "POST /api/chat (SSE): 200, $(grep -c '^data:' worker/body) events"
          balance=""
          for _ in $(seq 40); do # the stream is billed when it ends, after its last byte: poll
            w -H 'authorization: Bearer user-1' "$base/credits/balance" >/dev/null
            balance="$(cat worker/body)"
            grep -q '"balance":973' <<<"$balance" && break
            sleep 0.25
          done
          grep -q '"balance":973' <<<"$balance" || fail "balance after 12 + 15 charged of 1000: $balance"
          echo "GET /credits/balance: 200, $balance"
          code="$(w -X POST -H 'authorization: Bearer nobody' "$base/api/summarize")"
          [ "$code" = 402 ] || fail "POST /api/summarize without credits answered $code"
          echo "POST /api/summarize (no credits): 402"
          w "$base/__refusals" >/dev/null
          refusals="$(cat worker/body)"
          for part in sqlite ledgerFile; do
            node -e 'const r = JSON.parse(process.argv[1])[process.argv[2]];
              if (!/^ConfigurationError \(CONFIGURATION_ERROR\): .* cannot run on Cloudflare Workers \(workerd\)/.test(r)) process.exit(1)' \
              "$refusals" "$part" || fail "$part was not refused at construction: $refusals"
          done
          echo "refused at construction: $refusals"
          kill "$served"
          wait "$served" || true
          ;;
        next)
          # examples/next as a user installs it (the packed package instead of the registry's),
          # `next build` (which type-checks it), `next start`, then over HTTP: a grant, the metered
          # route, the streamed route billed at its end from its usage, the balance, a 402, the console,
          # the AI SDK chat route (charged, the badge, a 402 before the model).
          echo "--- Next.js $(version "$modules/next") on Node $(node -v)"
          # In .ci/runtimes/next-app: Next.js, React and their types resolve from .ci/runtimes'
          # node_modules (and TypeScript from the repository's), already installed, so the app
          # installs only the packed package (Next.js takes the lockfile's folder as its root).
          app="$here/next-app"
          rm -rf "$app"
          mkdir "$app"
          trap 'rm -rf "$work" "$app"' EXIT
          cp -r "$repo/examples/next/." "$app/"
          (
            cd "$app"
            node -e 'const p = require("./package.json"); p.dependencies = {}; p.devDependencies = {};
              require("fs").writeFileSync("package.json", JSON.stringify(p, null, 2))'
            # and the AI SDK (the chat route), at the repository's version.
            npm_install --no-audit --no-fund --prefer-offline --silent --no-package-lock "$work/$tarball" \
              "ai@$(node -p "require('$repo/node_modules/ai/package.json').version")"
            export NEXT_TELEMETRY_DISABLED=1
            node "$modules/next/dist/bin/next" build > build.log 2>&1 || { cat build.log >&2; exit 1; }
            grep -E '^(├|└|┌)' build.log || true
            port=$((20000 + RANDOM % 20000))
            env -u CREDIT_PG_URL CONSOLE_TOKEN=console-test CRON_SECRET=cron-test node "$modules/next/dist/bin/next" start -H 127.0.0.1 -p "$port" > start.log 2>&1 &
            served=$!
            base="http://127.0.0.1:$port"
            for _ in $(seq 120); do curl -s "$base/credits/balance" >/dev/null && break; sleep 0.25; done
            w() { curl -sS -o body -D headers -w '%{http_code}' "$@"; }
            fail() { kill "$served"; cat start.log >&2; echo "next: $*" >&2; exit 1; }
            code="$(w -X POST -H 'authorization: Bearer admin' -H 'content-type: application/json' -d '{"amount": 1000}' "$base/admin/credits/users/user-1/add")"
            [ "$code" = 200 ] || [ "$code" = 201 ] || fail "grant answered $code: $(cat body)"
            code="$(w -X POST -H 'authorization: Bearer user-1' -d '{}' "$base/api/summarize")"
            [ "$code" = 200 ] && grep -qi '^x-credits-deducted: 12' headers || fail "POST /api/summarize: $code $(cat headers)"
            echo "POST /api/summarize: 200, X-Credits-Deducted: 12"
            code="$(w -X POST -H 'authorization: Bearer user-1' "$base/api/chat")"
            [ "$code" = 200 ] && grep -q '"usage"' body || fail "POST /api/chat: $code $(cat body)"
            echo "POST /api/chat (SSE): 200, $(grep -c '^data:' body) events"
            balance=""
            for _ in $(seq 40); do # billed when the stream ends: 20 tokens in at 1, 5 out at 3 = 35
              w -H 'authorization: Bearer user-1' "$base/credits/balance" >/dev/null
              balance="$(cat body)"
              grep -q '"balance":953' <<<"$balance" && break
              sleep 0.25
            done
            grep -q '"balance":953' <<<"$balance" || fail "balance after 12 + 35 charged of 1000: $balance"
            echo "GET /credits/balance: 200, $balance"
            code="$(w -X POST -H 'authorization: Bearer nobody' "$base/api/summarize")"
            [ "$code" = 402 ] || fail "POST /api/summarize without credits answered $code"
            echo "POST /api/summarize (no credits): 402"
            code="$(w -H 'authorization: Bearer console-test' "$base/console/accounts/user-1")"
            [ "$code" = 200 ] && grep -q 'user-1' body || fail "GET /console/accounts/user-1: $code"
            [ "$(w "$base/console")" = 403 ] || fail "the console without its token did not answer 403"
            echo "GET /console/accounts/user-1: 200; without the token: 403"
            code="$(w -H 'authorization: Bearer cron-test' "$base/api/cron/credits")"
            [ "$code" = 200 ] && grep -q '"task":"jobs"' body || fail "GET /api/cron/credits: $code $(cat body)"
            [ "$(w "$base/api/cron/credits")" = 401 ] || fail "the cron route without CRON_SECRET did not answer 401"
            echo "GET /api/cron/credits: 200 (one round of each task, createWorker); without CRON_SECRET: 401"
            grep -F '[meter] user-1 /api/chat: held 200, committed 35' start.log || fail "the stream's charge was not reported"
            # The AI SDK chat route (streamText through credit-management/ai): 20 in at 1, 5 out at 3 = 35.
            code="$(w -X POST -H 'authorization: Bearer user-1' "$base/api/ai/chat")"
            [ "$code" = 200 ] && grep -q 'Credits are counted per token.' body || fail "POST /api/ai/chat: $code $(cat body)"
            echo "POST /api/ai/chat (streamText): 200, $(cat body)"
            for _ in $(seq 40); do
              w -H 'authorization: Bearer user-1' "$base/api/ai/badge" >/dev/null
              grep -q '>918<' body && break
              sleep 0.25
            done
            grep -q '>918<' body || fail "the badge after 35 more charged (918): $(cat body)"
            echo "GET /api/ai/badge: 918 available"
            grep -F '[ai] user-1 /api/ai/chat: held' start.log | grep -F 'committed 35' || fail "the chat's charge was not reported"
            code="$(w -X POST -H 'authorization: Bearer nobody' "$base/api/ai/chat")"
            [ "$code" = 402 ] && grep -q INSUFFICIENT_CREDITS body || fail "POST /api/ai/chat without credits: $code $(cat body)"
            echo "POST /api/ai/chat (no credits): 402 before any model call"
            kill "$served"
            wait "$served" || true
          )
          ;;
        *) echo "unknown runtime $runtime" >&2; exit 1 ;;
      esac
    done
    if [ -n "${CREDIT_PG_URL:-}" ]; then
      node -e 'const pg = require("pg"); const c = new pg.Client({ connectionString: process.env.CREDIT_PG_URL });
        c.connect().then(() => c.query(`DROP SCHEMA IF EXISTS "${process.argv[1]}_bun", "${process.argv[1]}_deno", "${process.argv[1]}_workerd" CASCADE`)).then(() => c.end());' "$schema"
    fi
    echo "runtimes check ($*): ok (${SECONDS} s)"
    ;;
  *)
    echo "usage: $0 install | node 22|24 | suite 22|24 | [node22] [node24] [bun] [deno] [workerd] [next]" >&2
    exit 2
    ;;
esac
