// benches/load.py app "echo64k": streams the request body back.
export default { fetch(req) { return new Response(req.body); } };
