// Example module app for rip-server. Run it with:
//
//   rip-server examples/hello
//
// (Bun or Node 20+ runs it through rip-server's module loader.)
// Routes: /  /ping  /echo (streams the request body back)  /slow?ms=N  else 404.

const text = (body, status = 200) =>
  new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });

export default {
  async fetch(req) {
    const url = new URL(req.url);
    switch (url.pathname) {
      case "/":
        return text("Hello from rip-server\n");
      case "/ping":
        return text("pong");
      case "/echo":
        return new Response(req.body, {
          headers: { "content-type": req.headers.get("content-type") || "application/octet-stream" },
        });
      case "/slow": {
        const n = Number.parseInt(url.searchParams.get("ms") ?? "", 10);
        const ms = Number.isFinite(n) && n >= 0 ? n : 1000;
        await new Promise((resolve) => setTimeout(resolve, ms));
        return text(`slept ${ms} ms\n`);
      }
      default:
        return text("not found\n", 404);
    }
  },
};
