// A balance badge for the chat page: the caller's available credits as a small SVG
// (`<img src="/api/ai/badge">` behind your session cookie), never cached.
import { credits, identify } from "../../../../lib/credits";

export async function GET(request: Request): Promise<Response> {
  const identity = identify(request);
  if (identity === null) return new Response(null, { status: 401 });
  const info = await (await credits()).credits.getUserCreditsInfo(identity.userId);
  const label = "credits";
  const value = info.available.toLocaleString("en-US");
  const left = 8 + label.length * 7;
  const width = left + 8 + value.length * 7;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="20" role="img" aria-label="${label}: ${value}">
<rect width="${left}" height="20" fill="#555"/><rect x="${left}" width="${width - left}" height="20" fill="${info.available > 0 ? "#2e7d32" : "#c62828"}"/>
<g fill="#fff" font-family="Verdana,sans-serif" font-size="11"><text x="4" y="14">${label}</text><text x="${left + 4}" y="14">${value}</text></g>
</svg>`;
  return new Response(svg, { headers: { "content-type": "image/svg+xml", "cache-control": "no-store" } });
}
