// Hono as a module app: rip-server's loader serves the app's fetch handler.
//   npm install --prefix examples/hono
//   rip-server examples/hono http:3000            (Bun if installed, else Node)
import { Hono } from "hono";

const app = new Hono();

app.get("/", (c) => c.text("Hello from Hono"));
app.post("/echo", async (c) => c.text(await c.req.text()));
// Who the client is, as rip-server tells the app (README "What your app receives").
app.get("/whoami", (c) =>
  c.json({
    ip: c.req.header("x-real-ip"),
    proto: c.req.header("x-forwarded-proto"),
    host: c.req.header("x-forwarded-host"),
    id: c.req.header("x-request-id"),
  }),
);

export default app;
