// benches/load.py "direct" baseline under Node: node:cluster with WORKERS
// processes, each serving an app module's fetch handler on TCP through a
// minimal http.createServer -> Request / Response -> res bridge (the response
// body is buffered, which is fine for the small benchmark apps). Prints
// "ready" once every worker listens; SIGTERM stops the workers too. With
// SOCKET instead of PORT: one process (no cluster) on that unix socket, the
// plain app process behind benches/load.py's "haproxy-plain" (no loader).
//
//   PORT=8080 WORKERS=2 APP_ENTRY=/abs/path/index.js node direct-node.mjs
//   SOCKET=/tmp/a.sock APP_ENTRY=/abs/path/index.js node direct-node.mjs
import cluster from "node:cluster";
import http from "node:http";
import { Readable } from "node:stream";
import { pathToFileURL } from "node:url";

const workers = Number(process.env.WORKERS || 2);
const socket = process.env.SOCKET;

if (cluster.isPrimary && !socket) {
  let listening = 0;
  cluster.on("listening", () => {
    if (++listening === workers) console.log("ready");
  });
  cluster.on("exit", (worker, code) => {
    console.error(`direct-node: worker ${worker.process.pid} exited (${code})`);
  });
  process.on("SIGTERM", () => {
    for (const worker of Object.values(cluster.workers)) worker.process.kill("SIGTERM");
    process.exit(0);
  });
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const app = (await import(pathToFileURL(process.env.APP_ENTRY).href)).default;
  const fetch = typeof app === "function" ? app : app.fetch.bind(app);
  const serve = async (req, res) => {
    const headers = new Headers();
    for (let i = 0; i < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
    const hasBody = req.method !== "GET" && req.method !== "HEAD";
    const request = new Request(`http://${req.headers.host || "localhost"}${req.url}`, {
      method: req.method,
      headers,
      body: hasBody ? Readable.toWeb(req) : undefined,
      duplex: "half",
    });
    let response;
    try {
      response = await fetch(request);
    } catch (err) {
      console.error(err);
      response = new Response("Internal Server Error", { status: 500 });
    }
    const body = Buffer.from(await response.arrayBuffer());
    const head = [...response.headers].filter(([name]) => name !== "content-length").flat();
    res.writeHead(response.status, [...head, "content-length", String(body.length)]);
    res.end(body);
  };
  const server = http.createServer(serve);
  if (socket) {
    server.listen(socket, () => console.log("ready"));
    process.on("SIGTERM", () => process.exit(0));
  } else {
    server.listen(Number(process.env.PORT), "127.0.0.1");
  }
}
