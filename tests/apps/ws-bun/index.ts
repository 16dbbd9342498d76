// A Bun module app for the tests: /ws upgrades to a WebSocket that echoes
// each message as "bun: <message>"; anything else answers "pong".
export default {
  fetch(req: Request, server: any) {
    if (new URL(req.url).pathname === "/ws") {
      if (server.upgrade(req)) return undefined;
      return new Response("upgrade failed", { status: 400 });
    }
    return new Response("pong");
  },
  websocket: {
    message(ws: any, message: string | Uint8Array) {
      ws.send(`bun: ${typeof message === "string" ? message : new TextDecoder().decode(message)}`);
    },
  },
};
