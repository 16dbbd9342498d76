// benches/slow.py app (Bun or Node): what slow clients ask for.
//   GET  /ping            "pong"
//   POST /upload, /echo   reads the whole body, answers its length in bytes
//   GET  /big?n=BYTES     n bytes (zeros) with a Content-Length, as fast as
//                         the socket takes them
// The same module runs behind rip-server and behind HAProxy.

let zeros = new Uint8Array(0); // grown to the largest n asked for, then shared

function big(n) {
  if (n > zeros.length) zeros = new Uint8Array(n);
  return zeros.subarray(0, n);
}

export default {
  async fetch(req) {
    const url = new URL(req.url);
    switch (url.pathname) {
      case "/ping":
        return new Response("pong");
      case "/upload":
      case "/echo": {
        let length = 0;
        if (req.body) for await (const chunk of req.body) length += chunk.length;
        return new Response(String(length));
      }
      case "/big": {
        const n = Number.parseInt(url.searchParams.get("n") ?? "", 10);
        if (!(n >= 0 && n <= 1 << 30)) return new Response("bad n\n", { status: 400 });
        return new Response(big(n), { headers: { "content-type": "application/octet-stream" } });
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  },
};
