# workerd's configuration for the check (.ci/runtimes/check.sh workerd): the bundled Worker on
# 127.0.0.1:$PORT on Node.js compatibility, with PostgreSQL's URL and schema as text bindings (what `wrangler` makes of vars
# and secrets). The placeholders are filled in by check.sh.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    # Outbound TCP (connect(), which pg uses) goes through "internet": by default public addresses
    # only; here PostgreSQL is on loopback.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:@PORT@", http = (), service = "main") ],
);

const worker :Workerd.Worker = (
  modules = [ (name = "worker.js", esModule = embed "worker.js") ],
  compatibilityDate = "2026-11-01",
  # nodejs_compat is on by default from the 2026-08-04 compatibility date on (earlier dates: add
  # compatibilityFlags = ["nodejs_compat"]).
  bindings = [
    (name = "CREDIT_PG_URL", text = "@PG_URL@"),
    (name = "CREDIT_PG_SCHEMA", text = "@PG_SCHEMA@"),
  ],
);
