#!/usr/bin/env python3
"""Measures hot reload: the time from writing a file to the new code answering.

For each reload mode (module, process) and each JavaScript runtime found
(node, bun), starts a release build of rip-server (w:2) on a small app in a
temp dir, then N times: rewrites the app's entry to answer a new version and
polls GET / until the new version answers (first answer), and until ten
answers in a row are new (every worker). Prints one line per mode/runtime
with the median and the worst of N.

    cargo build --release && python3 benches/reload.py [N]
"""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"), "release", "rip-server")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def write_app(path, version):
    with open(path, "w") as f:
        f.write("export default { fetch() { return new Response(%s); } };\n" % json.dumps(version))


def get(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()


def status(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def wait(check, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)
    raise RuntimeError("timed out")


def measure(mode, runtime):
    app = tempfile.mkdtemp(prefix="ripbench")
    sockets = tempfile.mkdtemp(prefix="rips")
    entry = os.path.join(app, "index.js")
    write_app(entry, "v0")
    server = subprocess.Popen(
        [BIN, app, "http:0", "w:2", "--hot-reload=" + mode, "--runtime=" + runtime,
         "--no-access-log", "--socket-dir=" + sockets],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
        healthy = lambda: (s := status(port)) and s["status"] == "healthy" and s["workers"] == 2
        wait(healthy)
        first, every = [], []
        for n in range(1, ROUNDS + 1):
            want = "v%d" % n
            time.sleep(0.4)  # let the previous round settle
            write_app(entry, want)
            written = time.monotonic()
            wait(lambda: get(port) == want)
            first.append(time.monotonic() - written)
            wait(lambda: all(get(port) == want for _ in range(10)))
            every.append(time.monotonic() - written)
            wait(healthy)
        return first, every
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(app, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


def ms(seconds):
    return "%4.0f ms" % (seconds * 1000)


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    runtimes = [r for r in ("node", "bun") if shutil.which(r)]
    print("hot reload, file write -> new code answering (w:2, %d rounds, median / worst)" % ROUNDS)
    print("%-8s %-5s %-22s %-22s" % ("mode", "app", "first answer", "every worker"))
    for mode in ("module", "process"):
        for runtime in runtimes:
            first, every = measure(mode, runtime)
            print("%-8s %-5s %-22s %-22s" % (
                mode, runtime,
                "%s / %s" % (ms(statistics.median(first)), ms(max(first))),
                "%s / %s" % (ms(statistics.median(every)), ms(max(every)))))


if __name__ == "__main__":
    main()
