// benches/load.py app "bun-ping" / "node-ping": the smallest fetch handler.
export default { fetch() { return new Response("pong"); } };
