// The credit API (docs/http.md): /credits/* for the caller's own account, in a catch-all route.
import { creditApi } from "../../../lib/credits";

export const dynamic = "force-dynamic";

export { creditApi as GET, creditApi as POST, creditApi as PUT, creditApi as PATCH, creditApi as DELETE };
