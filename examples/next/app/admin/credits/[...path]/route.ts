// The credit API (docs/http.md): /admin/credits/* for admins, in a catch-all route.
import { creditApi } from "../../../../lib/credits";

export const dynamic = "force-dynamic";

export { creditApi as GET, creditApi as POST, creditApi as PUT, creditApi as PATCH, creditApi as DELETE };
