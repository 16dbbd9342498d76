"""Flask under gunicorn as a rip-server command app (see ./app)."""

from flask import Flask, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

app = Flask(__name__)
# One proxy hop, rip-server: remote_addr, scheme and host come from the
# X-Forwarded-* fields it sets.
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)


@app.get("/")
def index():
    return "Hello from Flask", 200, {"Content-Type": "text/plain"}


@app.post("/echo")
def echo():
    return request.get_data(), 200, {"Content-Type": "text/plain"}


@app.get("/whoami")
def whoami():
    return jsonify(
        ip=request.remote_addr,
        proto=request.scheme,
        host=request.host.split(":")[0],
        id=request.headers.get("X-Request-Id"),
    )
