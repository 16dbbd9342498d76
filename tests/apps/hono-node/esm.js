// ES-module syntax in a "type": "commonjs" package, importing a local module.
import { Hono } from "hono";
import { greeting } from "./greeting.js";

const app = new Hono();
app.get("/", (c) => c.text(`${greeting} from esm`));
app.post("/echo", async (c) => c.text(await c.req.text()));
app.get("/ip", (c) => c.text(c.req.header("x-real-ip") ?? "none"));
export default app;
