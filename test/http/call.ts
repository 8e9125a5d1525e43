/** A GET through a Fetch handler, read back as text and, when it is JSON, parsed (the report routes' tests). */
export function caller(handler: (request: Request) => Promise<Response>) {
  return async (path: string, token?: string) => {
    const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
    const r = await handler(new Request(`http://localhost${path}`, { headers }));
    const text = await r.text();
    const type = r.headers.get("content-type") ?? "";
    return {
      status: r.status,
      headers: r.headers,
      text,
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON answers, read field by field
      body: (type.startsWith("application/json") ? JSON.parse(text) : null) as Record<string, any>,
    };
  };
}
