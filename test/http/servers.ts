/** Real servers on loopback for each adapter the HTTP layer supports. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import express from "express";
import Fastify from "fastify";
import { Hono } from "hono";
import { toNodeHandler, type CreditHandler } from "../../src/http/index.js";

export interface Running {
  url: string;
  close(): Promise<void>;
}

export async function listen(server: Server): Promise<Running> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * A POST with `Transfer-Encoding: chunked`, sent whole (headers, every chunk, the last chunk), then
 * everything the server writes until it closes the connection (write errors after the server has
 * stopped reading are ignored: the answer may already be there).
 */
export function rawChunked(base: string, path: string, token: string, chunks: string[]): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname);
    let got = "";
    socket.on("data", (d: Buffer) => (got += d.toString()));
    socket.on("error", () => undefined);
    socket.on("close", () => resolve(got));
    socket.on("connect", () => {
      // One write of the whole request: a body that arrived in several segments, the server's read
      // stopping at the limit, left bytes unread at its close, and the kernel then answers with a
      // reset that can discard the 413 before this client reads it (a TCP race, not the answer).
      socket.cork();
      socket.write(
        [
          `POST ${path} HTTP/1.1`,
          `Host: ${hostname}:${port}`,
          `Authorization: Bearer ${token}`,
          "Content-Type: application/json",
          "Transfer-Encoding: chunked",
          "",
          "",
        ].join("\r\n"),
      );
      for (const c of chunks) socket.write(`${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`);
      socket.write("0\r\n\r\n");
      socket.uncork();
    });
  });
}

export interface Outcome {
  /** Everything the server wrote. */
  reply: string;
  /** The client's socket error (EPIPE, ECONNRESET), if any. */
  error: string | null;
  /** Bytes of body the client wrote before the server closed or it finished. */
  sent: number;
  /** Milliseconds from the first byte to the close. */
  ms: number;
}

/**
 * A client that sends a chunked body of `bytes` (or, with `Infinity`, until the server closes),
 * in 16 KiB chunks as fast as the socket takes them, reading whatever comes back meanwhile (see
 * test/http/lingering-close.test.ts).
 */
export function sendOversized(
  base: string,
  path: string,
  bytes: number,
  token = "",
  limitMs = 20_000,
): Promise<Outcome> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const started = Date.now();
    // Half-open allowed: it goes on sending after the server ended its side, as curl and browsers do.
    const socket = connect({ port: Number(port), host: hostname, allowHalfOpen: true });
    let reply = "";
    let error: string | null = null;
    let sent = 0;
    let closed = false;
    // A bound of the test's own: no client runs longer than this.
    const stop = setTimeout(() => socket.destroy(), limitMs);
    socket.on("data", (d: Buffer) => (reply += d.toString()));
    socket.on("error", (e: NodeJS.ErrnoException) => (error ??= e.code ?? e.message));
    socket.on("close", () => {
      closed = true;
      clearTimeout(stop);
      resolve({ reply, error, sent, ms: Date.now() - started });
    });
    const piece = `4000\r\n${"x".repeat(0x4000)}\r\n`;
    const pump = () => {
      while (!closed && !socket.destroyed && sent < bytes) {
        sent += 0x4000;
        if (!socket.write(piece)) return void socket.once("drain", pump);
      }
      if (!closed && !socket.destroyed && sent >= bytes) socket.end("0\r\n\r\n");
    };
    socket.on("connect", () => {
      socket.write(
        [
          `POST ${path} HTTP/1.1`,
          `Host: ${hostname}:${port}`,
          ...(token === "" ? [] : [`Authorization: Bearer ${token}`]),
          "Content-Type: application/json",
          "Transfer-Encoding: chunked",
          "",
          '4\r\n{"a"\r\n',
        ].join("\r\n"),
      );
      pump();
    });
  });
}

/** Serves a Fetch handler the way each framework would host it. */
export const hosts: Record<string, (handler: CreditHandler) => Promise<Running>> = {
  "node:http": (handler) => listen(createServer(toNodeHandler(handler))),
  express: (handler) => {
    const app = express();
    app.use(toNodeHandler(handler));
    // Paths outside the handler's base paths fall through to the app.
    app.get("/elsewhere", (_req, res) => {
      res.json({ app: true });
    });
    return listen(createServer(app));
  },
  fastify: async (handler) => {
    const app = Fastify();
    const node = toNodeHandler(handler);
    // onRequest runs before Fastify reads the body, so the handler gets the raw bytes.
    app.addHook("onRequest", async (request, reply) => {
      const path = request.url.split("?")[0] ?? "";
      if (handler.basePaths.some((b) => path === b || path.startsWith(`${b}/`))) {
        reply.hijack();
        await node(request.raw, reply.raw);
      }
    });
    app.get("/elsewhere", async () => ({ app: true }));
    await app.listen({ port: 0, host: "127.0.0.1" });
    const { port } = app.server.address() as AddressInfo;
    return { url: `http://127.0.0.1:${port}`, close: async () => void (await app.close()) };
  },
  hono: async (handler) => {
    const app = new Hono();
    for (const base of handler.basePaths) app.all(`${base}/*`, (c) => handler(c.req.raw));
    app.get("/elsewhere", (c) => c.json({ app: true }));
    return serveHono(app.fetch);
  },
};

export async function serveHono(fetch: (request: Request) => Response | Promise<Response>): Promise<Running> {
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch, port: 0, hostname: "127.0.0.1" }, () => resolve(s as Server)) as Server;
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export type NodeListener = (req: IncomingMessage, res: ServerResponse) => void;

/** Polls `fn` every 5 ms until it returns something (or `ms` pass: then throws). */
export async function waitFor<T>(fn: () => T | undefined, ms = 5000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
