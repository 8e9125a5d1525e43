// The operator's console (docs/console.md) under /console, in one optional catch-all route: its
// pages, its two scripts and its forms' POSTs all reach the one Fetch handler.
import { createConsoleHandler } from "credit-management/console";
import { credits } from "../../../lib/credits";

export const dynamic = "force-dynamic";

// Made once per server process: its forms' CSRF tokens are signed with its secret.
let made: Promise<(request: Request) => Promise<Response>> | undefined;

async function handle(request: Request): Promise<Response> {
  made ??= credits().then((manager) =>
    createConsoleHandler(manager, {
      // Your session or SSO check here. The example: a bearer token from CONSOLE_TOKEN.
      authorize: (r) =>
        process.env.CONSOLE_TOKEN && r.headers.get("authorization") === `Bearer ${process.env.CONSOLE_TOKEN}`
          ? { role: "admin", actor: "example-admin" }
          : "deny",
      // The same on every process behind one balancer (forms stay valid across processes).
      csrfSecret: process.env.CONSOLE_CSRF_SECRET,
    }),
  );
  return (await made)(request);
}

export { handle as GET, handle as POST };
