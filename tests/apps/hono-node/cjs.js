// CommonJS: `module.exports = app`.
const { Hono } = require("hono");

const app = new Hono();
app.get("/", (c) => c.text("hello from cjs"));
app.post("/echo", async (c) => c.text(await c.req.text()));
module.exports = app;
