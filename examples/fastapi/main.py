"""FastAPI under uvicorn as a rip-server command app (see ./app)."""

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
def index() -> str:
    return "Hello from FastAPI"


@app.post("/echo", response_class=PlainTextResponse)
async def echo(request: Request) -> str:
    return (await request.body()).decode()


@app.get("/whoami")
def whoami(request: Request) -> dict:
    # uvicorn --proxy-headers makes these the client's, from X-Forwarded-*.
    return {
        "ip": request.client.host if request.client else None,
        "proto": request.url.scheme,
        "host": request.url.hostname,
        "id": request.headers.get("x-request-id"),
    }
