// A metered route: credits are held before the handler runs (X-Estimated-Credits, or
// defaultEstimate) and what it recorded is charged when it answers (X-Credits-Deducted); 402 when
// the account cannot cover the hold (docs/metering.md).
import { recordUsage } from "credit-management";
import { creditMetering } from "credit-management/http";
import { credits, identify } from "../../../lib/credits";

async function summarize(request: Request): Promise<Response> {
  const { text = "" } = (await request.json().catch(() => ({}))) as { text?: string };
  recordUsage({ amount: 12, model: "summarizer", provider: "example" });
  return Response.json({ summary: text.slice(0, 40) || "Credits are counted per request." });
}

export async function POST(request: Request): Promise<Response> {
  const manager = await credits();
  return creditMetering({ credits: manager.credits, authenticate: identify, defaultEstimate: 50 })(summarize)(request);
}
