// benches/load.py "direct" baseline under Bun: an app module's fetch handler
// served straight on TCP, no proxy. Start several with the same PORT; reusePort
// lets the kernel spread connections over them. Prints "ready" once listening.
// With SOCKET instead of PORT it serves on that unix socket: the plain app
// process behind benches/load.py's "haproxy-plain" (no loader).
//
//   PORT=8080 APP_ENTRY=/abs/path/index.js bun direct-bun.mjs
//   SOCKET=/tmp/a.sock APP_ENTRY=/abs/path/index.js bun direct-bun.mjs
const app = (await import(process.env.APP_ENTRY)).default;
const fetch = typeof app === "function" ? app : app.fetch.bind(app);
if (process.env.SOCKET) Bun.serve({ unix: process.env.SOCKET, fetch });
else Bun.serve({ hostname: "127.0.0.1", port: Number(process.env.PORT), reusePort: true, fetch });
console.log("ready");
