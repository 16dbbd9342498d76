// rip-server module loader — carried by the rip-server binary (include_str!) and
// run as `bun loader.mjs` or `node loader.mjs` (Node >= 20) with cwd = the app dir.
//
// Contract:
//   env in: RIP_SOCKET (unix socket to listen on), RIP_ENTRY (absolute path of the
//     user module), RIP_WORKER_ID, RIP_APP_NAME, RIP_HOT_RELOAD (none|module|process),
//     RIP_MAX_RELOADS (default 10).
//   The entry's default export is `{ fetch(req) }` or `function (req)` returning a
//     Response (or a Promise of one); anything else, or a failing import: error on
//     stderr, exit 1.
//   On the socket (HTTP/1.1, the socket private, 0600, from the start): `GET /ready` -> 200
//     `ok` / 503 `not-ready`; while a request is in flight any other request gets
//     503 `busy` + `Rip-Worker-Busy: 1`, `Retry-After: 0`, `Rip-Worker-Id: <id>`;
//     everything else goes to the handler (throw/reject -> 500, stack on stderr;
//     a response body stream or async iterable that fails midway: its error and
//     stack on stderr, the response cut short).
//     No idle/keep-alive/header/request timeouts; bodies stream both ways.
//   RIP_HOT_RELOAD=module: at most every 100 ms (on the request path) the entry's
//     mtime is checked and the module re-imported (cache-busted) before serving;
//     a broken edit keeps the last good handler. Past RIP_MAX_RELOADS successful
//     reloads every response carries `Rip-Worker-Recycle: 1`.
//   SIGTERM/SIGINT: stop accepting, finish the in-flight request, close the idle
//     connection, exit 0. Nothing is printed on stdout; errors go to stderr.

const isBun = typeof Bun !== "undefined";
// Under Bun, importing node:fs, node:path and node:url costs about 5 ms of
// CPU at start-up — a third of a worker's boot, paid at every recycle — so
// Bun's own calls are used there instead, and these are Node's alone.
const fs = isBun ? null : (await import("node:fs")).default;
const path = isBun ? null : (await import("node:path")).default;
const { pathToFileURL } = isBun ? {} : await import("node:url");
const env = process.env;
const socketPath = env.RIP_SOCKET;
const entryEnv = env.RIP_ENTRY;
const workerId = env.RIP_WORKER_ID || "0";
const appName = env.RIP_APP_NAME || "app";
const hotModule = env.RIP_HOT_RELOAD === "module";
const maxReloads = (() => {
  const n = Number.parseInt(env.RIP_MAX_RELOADS ?? "", 10);
  return Number.isFinite(n) && n >= 0 ? n : 10;
})();

const tag = `rip-loader[${appName}#${workerId}]`;

function fail(msg, err) {
  if (err !== undefined) console.error(`${tag}: ${msg}\n`, err);
  else console.error(`${tag}: ${msg}`);
  process.exit(1);
}

if (!socketPath) fail("RIP_SOCKET is not set");
if (!entryEnv) fail("RIP_ENTRY is not set");
// The worker passes an absolute path.
const entry = isBun ? entryEnv : path.resolve(entryEnv);
// Node needs a file: URL (and takes `?v=n` on it as a fresh module); Bun ignores
// the query of a file: URL but honours one on a plain absolute path.
const entrySpec = isBun ? entry : pathToFileURL(entry).href;

// ---------------------------------------------------------------------------
// Handler loading and module hot reload

let invoke = null; // (req, server?) => Response | Promise<Response>
// Bun's WebSocket handlers of the entry's default export
// (`export default { fetch(req, server) { server.upgrade(req) }, websocket: { message(ws, m) {} } }`).
let websocket = null;
let generation = 0; // cache-busting counter for re-imports
let reloads = 0; // successful reloads
let recycle = false; // reloads > maxReloads
let stopping = false;

// Returns a bound fetch function for a module namespace, or throws a clear error.
function handlerOf(mod) {
  const d = mod ? mod.default : undefined;
  if (typeof d === "function") return d;
  if (d !== null && typeof d === "object" && typeof d.fetch === "function") {
    return d.fetch.bind(d);
  }
  const what =
    d === undefined ? "no default export"
    : d !== null && typeof d === "object" ? "a default export object without a fetch() method"
    : `a default export of type ${d === null ? "null" : typeof d}`;
  const err = new TypeError(
    `${entry} has ${what}; expected \`export default { fetch(req) { ... } }\` ` +
      "or `export default function (req) { ... }` returning a Response",
  );
  err.badExport = true;
  throw err;
}

// The default export's `websocket` handlers, if it has them.
function websocketOf(mod) {
  const d = mod ? mod.default : undefined;
  return d !== null && typeof d === "object" && d.websocket !== null && typeof d.websocket === "object"
    ? d.websocket
    : null;
}

// A bad default export is reported by its message alone (its stack is ours).
const why = (err) => (err && err.badExport ? err.message : err);

// Bun's file times: missing files read as this.
const BUN_NO_FILE = 2 ** 52 - 1;

function statKey() {
  if (isBun) {
    const f = Bun.file(entry);
    const mtime = f.lastModified;
    return mtime >= BUN_NO_FILE ? null : `${mtime}:${f.size}`;
  }
  try {
    const st = fs.statSync(entry);
    return `${st.mtimeMs}:${st.size}:${st.ino}`;
  } catch {
    return null; // missing for a moment (editor's atomic save): treat as unchanged
  }
}

let entryKey = hotModule ? statKey() : null;
let lastCheck = 0;

// Called on the request path only when RIP_HOT_RELOAD=module. Returns null when
// nothing is to be done (the common case, no promise allocated), else a Promise.
function maybeReload() {
  const now = Date.now();
  if (now - lastCheck < 100) return null;
  lastCheck = now;
  const key = statKey();
  if (key === null || key === entryKey) return null;
  entryKey = key;
  return reload();
}

async function reload() {
  generation++;
  let next;
  let mod;
  try {
    // A CommonJS entry is cached by its file name, whatever the URL's query.
    if (!isBun) delete (await import("node:module")).createRequire(entry).cache[entry];
    mod = await import(`${entrySpec}?v=${generation}`);
    next = handlerOf(mod);
  } catch (err) {
    console.error(`${tag}: reload of ${entry} failed; keeping the last good handler\n`, why(err));
    return;
  }
  invoke = next;
  websocket = websocketOf(mod) ?? websocket;
  reloads++;
  if (reloads > maxReloads) recycle = true;
}

// ---------------------------------------------------------------------------
// Shared bits

const BUSY_BODY = "busy";
const NOT_READY_BODY = "not-ready";
const ERROR_BODY = "Internal Server Error";

function isResponse(r) {
  return r instanceof Response || (r != null && typeof r.status === "number" && typeof r.headers === "object" && r.headers !== null);
}

function notAResponse(r) {
  return new TypeError(`${entry}: the fetch handler returned ${r === null ? "null" : typeof r} instead of a Response`);
}

function logHandlerError(err) {
  console.error(`${tag}: request handler failed\n`, err);
}

// Node decides a `.js` file's format by the nearest package.json: with
// `"type": "commonjs"` (what `npm init -y` writes) an ES-module entry fails
// with "Cannot use import statement outside a module". The app's own `.js`
// files (not node_modules) that Node would load as CommonJS but that do not
// compile as CommonJS for ES-module syntax are loaded as ES modules instead,
// through a module hook (Node >= 20.6). A CommonJS file stays CommonJS.
const FORMAT_HOOK = `
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
let appDir = null;
export function initialize(data) { appDir = data.appDir; }
const ESM_ONLY = /Cannot use import statement|Unexpected token 'export'|import\\.meta|await is only valid|Cannot use 'import\\.meta'/;
function esmSyntax(source) {
  try {
    vm.compileFunction(source, ["exports", "require", "module", "__filename", "__dirname"]);
    return false;
  } catch (err) {
    return err instanceof SyntaxError && ESM_ONLY.test(err.message);
  }
}
export async function load(url, context, nextLoad) {
  const result = await nextLoad(url, context);
  const file = url.split("?")[0];
  if (result.format !== "commonjs" || !file.startsWith(appDir) || !file.endsWith(".js") ||
      file.includes("/node_modules/")) {
    return result;
  }
  const source = result.source == null ? await readFile(fileURLToPath(file), "utf8") : String(result.source);
  return esmSyntax(source) ? { format: "module", source, shortCircuit: true } : result;
}
`;

async function registerFormatHook() {
  const mod = await import("node:module");
  if (typeof mod.register !== "function") return; // Node < 20.6: as Node decides
  const appDir = pathToFileURL(process.cwd()).href.replace(/\/?$/, "/");
  mod.register(`data:text/javascript,${encodeURIComponent(FORMAT_HOOK)}`, { data: { appDir } });
}

async function initialLoad() {
  if (!isBun) await registerFormatHook();
  let mod;
  try {
    mod = await import(entrySpec);
  } catch (err) {
    fail(`failed to load ${entry}`, err);
  }
  try {
    invoke = handlerOf(mod);
  } catch (err) {
    fail(err.message);
  }
  websocket = websocketOf(mod);
}

if (isBun) await startBun();
else await startNode();

// ---------------------------------------------------------------------------
// Bun

// Bun drops an error of a response body stream without a word (the client
// just sees the connection end). Under Bun, a Response built on a stream or
// an async iterable gets it wrapped, so that such an error is logged with
// the app's stack; other bodies (strings, buffers, files) are untouched.
function logBodyErrors() {
  const NativeResponse = globalThis.Response;
  const report = (err) => console.error(`${tag}: the response body failed\n`, err);
  const streamed = (body) =>
    body !== null && typeof body === "object" && !(body instanceof Blob) &&
    (body instanceof ReadableStream || typeof body[Symbol.asyncIterator] === "function");
  const logged = (body) => {
    if (!(body instanceof ReadableStream)) {
      return (async function* () {
        try {
          yield* body;
        } catch (err) {
          report(err);
          throw err;
        }
      })();
    }
    const reader = body.getReader();
    return new ReadableStream({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (err) {
          report(err);
          controller.error(err);
        }
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
  };
  class Response extends NativeResponse {
    constructor(body, init) {
      super(streamed(body) ? logged(body) : body, init);
    }
    // A Response from fetch() or Response.json() is a Response still.
    static [Symbol.hasInstance](value) {
      return value instanceof NativeResponse;
    }
  }
  globalThis.Response = Response;
}

async function startBun() {
  logBodyErrors();
  const readyHeaders = () => (recycle ? { "content-type": "text/plain", "rip-worker-recycle": "1" } : { "content-type": "text/plain" });
  const busyHeaders = () => {
    const h = { "content-type": "text/plain", "rip-worker-busy": "1", "retry-after": "0", "rip-worker-id": workerId };
    if (recycle) h["rip-worker-recycle"] = "1";
    return h;
  };

  const finish = (r) => {
    // A handler that upgraded the request to a WebSocket returns nothing.
    if (r === undefined && websocket !== null) return undefined;
    if (!isResponse(r)) {
      logHandlerError(notAResponse(r));
      return serverError();
    }
    if (recycle) {
      try {
        r.headers.set("rip-worker-recycle", "1");
      } catch {
        r = new Response(r.body, r); // immutable headers (e.g. a fetch() response)
        r.headers.set("rip-worker-recycle", "1");
      }
    }
    return r;
  };
  const onError = (err) => {
    logHandlerError(err);
    return serverError();
  };
  const serverError = () => {
    const headers = { "content-type": "text/plain" };
    if (recycle) headers["rip-worker-recycle"] = "1";
    return new Response(ERROR_BODY, { status: 500, headers });
  };

  // Handlers still running. Bun forgets a request whose client went away
  // (pendingRequests drops) while its handler may still be running; this
  // keeps such a request "in flight" until the handler is done.
  let running = 0;
  const settled = (r) => {
    running--;
    return finish(r);
  };
  const failed = (err) => {
    running--;
    return onError(err);
  };
  const callHandler = (req, server) => {
    running++;
    let r;
    try {
      r = invoke(req, server);
    } catch (err) {
      return failed(err);
    }
    if (r !== null && typeof r === "object" && typeof r.then === "function") return r.then(settled, failed);
    return settled(r);
  };

  const fetch = (req, server) => {
    const method = req.method;
    if (method === "GET") {
      const url = req.url;
      if (url.endsWith("/ready") && new URL(url).pathname === "/ready") {
        return invoke
          ? new Response("ok", { headers: readyHeaders() })
          : new Response(NOT_READY_BODY, { status: 503, headers: readyHeaders() });
      }
    }
    // pendingRequests counts this request too, and stays up while a response
    // body is still streaming out.
    if (running > 0 || server.pendingRequests > 1) {
      return new Response(BUSY_BODY, { status: 503, headers: busyHeaders() });
    }
    if (!invoke) return new Response(NOT_READY_BODY, { status: 503, headers: { "content-type": "text/plain" } });
    if (hotModule) {
      const p = maybeReload();
      if (p !== null) {
        running++;
        return p.then(() => {
          running--;
          return callHandler(req, server);
        });
      }
    }
    return callHandler(req, server);
  };

  let server;
  const umask = process.umask(0o177); // the socket is created 0600
  try {
    server = Bun.serve({
      unix: socketPath,
      fetch,
      idleTimeout: 0, // the LB keeps one connection open indefinitely
      // Delegates to the entry's handlers (looked up on each event, so a
      // reload that brings new ones is followed).
      websocket: {
        idleTimeout: 0,
        open: (ws) => websocket?.open?.(ws),
        message: (ws, message) => websocket?.message?.(ws, message),
        close: (ws, code, reason) => websocket?.close?.(ws, code, reason),
        drain: (ws) => websocket?.drain?.(ws),
      },
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      development: false,
      error(err) {
        logHandlerError(err);
        return new Response(ERROR_BODY, { status: 500, headers: { "content-type": "text/plain" } });
      },
    });
  } catch (err) {
    fail(`cannot listen on ${socketPath}`, err);
  } finally {
    process.umask(umask);
  }

  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    const deadline = Date.now() + 30_000;
    server.stop(false); // stop accepting; in-flight requests go on
    while ((running > 0 || server.pendingRequests > 0) && Date.now() < deadline) await Bun.sleep(5);
    server.stop(true); // drop the idle kept-alive connection
    process.exit(0);
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);

  await initialLoad();
}

// ---------------------------------------------------------------------------
// Node

async function startNode() {
  const http = await import("node:http");

  let inflight = false;
  let inflightSocket = null;
  const queued = []; // [req, res, ...] pipelined on the in-flight connection
  const noop = () => {};
  const bodyStrategy = { highWaterMark: 64 * 1024, size: (chunk) => chunk.byteLength };
  const onBodyData = function (chunk) {
    const c = this[kBody];
    c.enqueue(chunk);
    if (c.desiredSize <= 0) this.pause();
  };
  const kBody = Symbol("rip.body");
  const nextTick = () => new Promise((resolve) => setImmediate(resolve, NOT_DONE));
  const NOT_DONE = Symbol("pending");

  const server = http.createServer({
    requestTimeout: 0,
    headersTimeout: 0,
    keepAliveTimeout: 0,
    requireHostHeader: false,
  });
  // Belt and braces: no idle, keep-alive, header or request timeouts at all.
  server.timeout = 0;
  server.keepAliveTimeout = 0;
  server.headersTimeout = 0;
  server.requestTimeout = 0;

  const plain = (res, status, body, extra) => {
    const headers = ["content-type", "text/plain", "content-length", String(body.length)];
    if (extra) headers.push(...extra);
    if (recycle) headers.push("rip-worker-recycle", "1");
    if (stopping) headers.push("connection", "close");
    res.writeHead(status, headers);
    res.end(body);
  };
  const busyExtra = ["rip-worker-busy", "1", "retry-after", "0", "rip-worker-id", workerId];

  function onRequest(req, res) {
    if (req.method === "GET" && req.url === "/ready") {
      if (invoke) plain(res, 200, "ok");
      else plain(res, 503, NOT_READY_BODY);
      return;
    }
    if (inflight) {
      // A request pipelined behind the in-flight one on the same connection
      // waits its turn (Node emits it early); any other connection is told busy.
      if (req.socket === inflightSocket) return void queued.push(req, res);
      return plain(res, 503, BUSY_BODY, busyExtra);
    }
    if (!invoke) return plain(res, 503, NOT_READY_BODY);
    start(req, res);
  }

  function start(req, res) {
    inflight = true;
    inflightSocket = req.socket;
    serve(req, res).then(done, done);
    function done(err) {
      discardBody(req);
      inflight = false;
      inflightSocket = null;
      if (err) {
        logHandlerError(err);
        res.destroy();
      }
      if (queued.length > 0) {
        const [nreq, nres] = queued.splice(0, 2);
        if (nreq.socket.destroyed) queued.length = 0;
        else return start(nreq, nres);
      }
      if (stopping) afterInFlight(req, res);
    }
  }

  // The request body as a byte-counted, backpressured web stream. (Node 20's
  // Readable.toWeb() counts chunks, not bytes, so it may buffer ~16k chunks.)
  function bodyOf(req) {
    let open = true;
    return new ReadableStream(
      {
        start(c) {
          req[kBody] = c;
          req.on("data", onBodyData);
          req.once("end", () => {
            if (open) (open = false), c.close();
          });
          const aborted = (err) => {
            if (open) (open = false), c.error(err || new Error("request body aborted by the client"));
          };
          req.once("error", aborted);
          req.once("close", () => aborted());
        },
        pull() {
          req.resume();
        },
        cancel() {
          open = false;
          discardBody(req);
        },
      },
      bodyStrategy,
    );
  }

  // Throw away what is left of a request body nobody reads, so the kept-alive
  // connection stays usable.
  function discardBody(req) {
    if (req.complete || req.destroyed) return;
    req.off("data", onBodyData);
    req.resume();
  }

  function toRequest(req) {
    const raw = req.rawHeaders;
    const headers = new Headers();
    for (let i = 0; i < raw.length; i += 2) headers.append(raw[i], raw[i + 1]);
    const host = req.headers.host;
    const u = req.url;
    let url;
    if (u.charCodeAt(0) === 47 /* / */) url = `http://${host || "localhost"}${u}`;
    else if (/^https?:\/\//i.test(u)) url = u;
    else url = `http://${host || "localhost"}/${u === "*" ? "" : u}`;
    const method = req.method;
    const init = { method, headers };
    if (method !== "GET" && method !== "HEAD") {
      const cl = req.headers["content-length"];
      if ((cl !== undefined && cl !== "0") || req.headers["transfer-encoding"] !== undefined) {
        init.body = bodyOf(req);
        init.duplex = "half";
      }
    }
    try {
      return new Request(url, init);
    } catch {
      return new Request(`http://localhost${u.charCodeAt(0) === 47 ? u : "/"}`, init);
    }
  }

  async function serve(req, res) {
    if (hotModule) {
      const p = maybeReload();
      if (p !== null) await p;
    }
    let response;
    try {
      response = await invoke(toRequest(req));
      if (!isResponse(response)) throw notAResponse(response);
    } catch (err) {
      logHandlerError(err);
      if (!res.destroyed) plain(res, 500, ERROR_BODY);
      return;
    }
    await send(req, res, response);
  }

  async function send(req, res, response) {
    const status = response.status;
    const statusText = response.statusText || undefined;
    const headers = [];
    let cookies = false;
    let hasLength = false;
    for (const [k, v] of response.headers) {
      if (k === "set-cookie") cookies = true;
      else {
        if (k === "content-length") hasLength = true;
        headers.push(k, v);
      }
    }
    if (cookies) {
      const list = typeof response.headers.getSetCookie === "function"
        ? response.headers.getSetCookie()
        : [response.headers.get("set-cookie")];
      for (const c of list) headers.push("set-cookie", c);
    }
    if (recycle) headers.push("rip-worker-recycle", "1");
    if (stopping) headers.push("connection", "close");

    const body = response.body;
    if (res.destroyed) {
      if (body) body.cancel().catch(noop);
      return;
    }
    // writeHead() with headers renders the head at once, so Content-Length must
    // be in `headers` already (res.end(data) no longer adds it).
    if (body === null || req.method === "HEAD" || status === 204 || status === 304 || status < 200) {
      if (body) body.cancel().catch(noop);
      if (body === null && !hasLength && req.method !== "HEAD" && status >= 200 && status !== 204 && status !== 304) {
        headers.push("content-length", "0");
      }
      res.writeHead(status, statusText, headers);
      res.end();
      return;
    }

    const fixed = fixedBody(response);
    if (fixed !== null) {
      if (!hasLength) headers.push("content-length", String(fixed.length));
      res.writeHead(status, statusText, headers);
      res.end(fixed.source);
      return;
    }

    const reader = body.getReader();
    let headSent = false;
    try {
      let r = await reader.read();
      if (r.done) {
        if (!hasLength) headers.push("content-length", "0");
        res.writeHead(status, statusText, headers);
        res.end();
        return;
      }
      let chunk = r.value;
      // Peek: a body that ends right after its first chunk (a string, a buffer)
      // goes out with a Content-Length instead of chunked encoding.
      let next = reader.read();
      r = await Promise.race([next, nextTick()]);
      if (r !== NOT_DONE && r.done) {
        if (!hasLength) headers.push("content-length", String(chunk.byteLength));
        res.writeHead(status, statusText, headers);
        headSent = true;
        res.end(chunk);
        return;
      }
      res.writeHead(status, statusText, headers);
      headSent = true;
      // Client gone while we wait on a slow/never-ending body: cancel it.
      const onClose = () => {
        if (!res.writableFinished) reader.cancel().catch(noop);
      };
      res.once("close", onClose);
      try {
        for (;;) {
          if (!res.write(chunk)) await drained(res);
          if (res.destroyed) {
            reader.cancel().catch(noop);
            return;
          }
          r = await next;
          if (r.done) break;
          chunk = r.value;
          next = reader.read(); // read ahead while this chunk is written
        }
        res.end();
      } finally {
        res.off("close", onClose);
      }
    } catch (err) {
      // A body that failed because the client went away is not worth a report.
      if (!res.destroyed && !req.socket.destroyed) logHandlerError(err);
      reader.cancel().catch(noop);
      if (!headSent && !res.destroyed) plain(res, 500, ERROR_BODY);
      else res.destroy();
    }
  }

  // Fast path for the common case: a Response built from a string or bytes
  // keeps them in undici's internal state; send them as they are, with a
  // Content-Length, instead of pumping them through the body stream. Anything
  // unexpected (another undici, a consumed body) takes the stream path.
  let kState; // undici's private `state` symbol, found on the first Response
  function fixedBody(response) {
    if (!(response instanceof Response) || response.bodyUsed) return null;
    if (kState === undefined) {
      kState = Object.getOwnPropertySymbols(response).find((s) => s.description === "state") ?? null;
    }
    if (kState === null) return null;
    const b = response[kState]?.body;
    if (!b || typeof b.length !== "number" || !b.stream || b.stream.locked) return null;
    const src = b.source;
    if (typeof src === "string" || src instanceof Uint8Array) return b;
    return null;
  }

  function drained(res) {
    return new Promise((resolve) => {
      const done = () => {
        res.off("drain", done);
        res.off("close", done);
        resolve();
      };
      res.on("drain", done);
      res.on("close", done);
    });
  }

  // The in-flight request of a stopping server is done: close its connection.
  function afterInFlight(req, res) {
    const sock = req.socket;
    if (res.writableFinished) sock.end();
    else res.once("finish", () => sock.end());
    server.closeIdleConnections();
  }

  server.on("request", onRequest);

  const umask = process.umask(0o177); // the socket is created 0600
  await new Promise((resolve) => {
    server.once("error", (err) => fail(`cannot listen on ${socketPath}`, err));
    server.listen(socketPath, resolve);
  });
  process.umask(umask);

  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    server.close(() => process.exit(0)); // fires once every connection is gone
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 30_000).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);

  await initialLoad();
}
