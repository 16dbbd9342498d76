#!/usr/bin/env python3
"""Soak: rip-server under a fault-and-load mix for a while, counting everything.

Starts a release build of rip-server (w:4, default recycling) on the example
module app, then for --minutes runs --clients client threads, each on a
kept-alive connection, sending a mix of GET /ping, GET /slow?ms=5 and POST
/echo with random bodies (0-64 KiB, and 1 MiB now and then) whose echoes are
checked byte for byte. Meanwhile, every --kill-every seconds it SIGKILLs a
worker process or an app process (alternately), and, with --lb-kills N, the
load balancer N times spread over the run. At the end it echoes 1 GiB
through the server (1 GiB up and 1 GiB down at once) and prints:

  requests, answers by status, transport errors (resets, timeouts: a request
  without an answer), corrupted echoes, kills by kind, failed answers against
  kills, how long the workers took to come back after the last kill, and the
  RSS of the LB and the workers before, at their peak, and after.

    cargo build --release
    python3 benches/soak.py --minutes 10           # the full soak
    python3 benches/soak.py --minutes 1 --lb-kills 2

A request is "failed" if it got a non-2xx answer; a worker or app kill may
fail the one request that worker had in flight (a 502, or a response cut
short if it had begun: counted with the failures). An LB kill closes
the connections it held, so the requests in flight on them get no answer
(a reset): those are counted apart. Loopback only; everything it starts is
stopped by pid at the end.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"), "release", "rip-server")
APP = os.path.join(ROOT, "examples", "hello")
WORKERS = 4


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return out


def argv(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def rss_kib(pid, field="VmRSS"):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    def __init__(self, runtime, log):
        self.dir = tempfile.mkdtemp(prefix="ripsoak")
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [BIN, APP, "http:0", "w:%d" % WORKERS, "--runtime=" + runtime,
             "--hot-reload=none", "--no-access-log", "--max-body=2G",
             "--socket-dir=" + self.dir],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        self.port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.wait_healthy(30)

    def status(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/status")
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def wait_healthy(self, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            s = self.status()
            if s and s["status"] == "healthy" and s["workers"] >= WORKERS:
                return True
            time.sleep(0.02)
        return False

    def role(self, name):
        return [p for p in children(self.proc.pid) if argv(p)[1:2] == [name.encode()]]

    def apps(self):
        return [c for w in self.role("worker") for c in children(w)]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.errors = Counter()
        self.corrupt = 0
        self.requests = 0
        self.failures = Counter()

    def add(self, status=None, error=None, corrupt=False, body=b""):
        with self.lock:
            self.requests += 1
            if status is not None:
                self.statuses[status] += 1
                if not 200 <= status < 300:
                    self.failures[(status, body[:40].decode("latin-1"))] += 1
            if error is not None:
                self.errors[error] += 1
            if corrupt:
                self.corrupt += 1


def client(port, stop, tally, seed):
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        pick = rng.random()
        body = None
        try:
            if pick < 0.5:
                conn.request("GET", "/ping")
            elif pick < 0.7:
                conn.request("GET", "/slow?ms=5")
            else:
                size = rng.randrange(1 << 20) if rng.random() < 0.02 else rng.randrange(65536)
                body = rng.randbytes(size)
                conn.request("POST", "/echo", body=body)
            response = conn.getresponse()
            data = response.read()
            corrupt = body is not None and response.status == 200 and data != body
            tally.add(status=response.status, corrupt=corrupt, body=data)
            if response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except socket.timeout:
            tally.add(error="timeout (no answer in 15 s)")
            conn.close()
            conn = None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            tally.add(error=type(e).__name__)
            conn.close()
            conn = None


def stream_gib(port):
    """Echoes 1 GiB through the server, sending and reading at once, and
    checks every byte that comes back (the app may answer chunked)."""
    total = 1 << 30
    pattern = bytes(range(256)) * 512  # 128 KiB, period 256
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(60)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)

    def send():
        sent = 0
        while sent < total:
            sock.sendall(pattern[:65536])
            sent += 65536

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return False
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        return False
    chunked = b"transfer-encoding: chunked" in head.lower()
    got = 0
    ok = True

    def fill(n):
        """Makes `buf` hold at least n bytes (False at the end)."""
        nonlocal buf
        while len(buf) < n:
            more = sock.recv(1 << 16)
            if not more:
                return False
            buf += more
        return True

    def check(data):
        nonlocal got, ok
        for i in range(0, len(data), 65536):
            piece = data[i:i + 65536]
            offset = got % 256
            if piece != pattern[offset:offset + len(piece)]:
                ok = False
            got += len(piece)

    while got < total:
        if not chunked:
            if not fill(1):
                break
            check(buf)
            buf = b""
            continue
        # A chunk: its size line, its data, its CRLF.
        while b"\r\n" not in buf:
            if not fill(len(buf) + 1):
                return False
        line, buf = buf.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        if size == 0 or not fill(size + 2):
            break
        check(buf[:size])
        buf = buf[size + 2:]
    sender.join(timeout=60)
    sock.close()
    return ok and got == total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=5, help="seconds between worker/app kills")
    parser.add_argument("--lb-kills", type=int, default=0, help="SIGKILL the LB this many times")
    parser.add_argument("--runtime", default="bun", choices=("bun", "node"))
    parser.add_argument("--log", help="write rip-server's log (its stderr) to this file")
    args = parser.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")

    server = Server(args.runtime, args.log)
    lb = server.role("lb")[0]
    rss_before = {"lb": rss_kib(lb), "workers": sum(rss_kib(p) for p in server.role("worker"))}
    tally = Tally()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(server.port, stop, tally, n), daemon=True)
               for n in range(args.clients)]
    for t in threads:
        t.start()

    kills = Counter()
    lb_peak = worker_peak = 0
    started = time.monotonic()
    end = started + args.minutes * 60
    next_kill = started + args.kill_every
    lb_times = [started + (i + 1) * (end - started) / (args.lb_kills + 1) for i in range(args.lb_kills)]
    lb_reset_errors = Counter()
    last_kill = started
    n = 0
    while time.monotonic() < end:
        time.sleep(0.1)
        for pid in server.role("lb"):
            lb_peak = max(lb_peak, rss_kib(pid))
        worker_peak = max(worker_peak, max([rss_kib(p) for p in server.role("worker")] or [0]))
        now = time.monotonic()
        if lb_times and now >= lb_times[0]:
            lb_times.pop(0)
            before = Counter(tally.errors)
            for pid in server.role("lb"):
                os.kill(pid, signal.SIGKILL)
                kills["lb"] += 1
            time.sleep(1)
            lb_reset_errors += Counter(tally.errors) - before
            last_kill = time.monotonic()
        if now >= next_kill:
            next_kill = now + args.kill_every
            kind = "worker" if n % 2 == 0 else "app"
            pids = server.role("worker") if kind == "worker" else server.apps()
            if pids:
                try:
                    os.kill(random.choice(pids), signal.SIGKILL)
                    kills[kind] += 1
                    last_kill = now
                except ProcessLookupError:
                    pass
            n += 1
    back = server.wait_healthy(60)
    back_after = time.monotonic() - last_kill
    stop.set()
    for t in threads:
        t.join(timeout=30)

    upload_ok = stream_gib(server.port)
    lb = server.role("lb")[0]
    lb_peak = max(lb_peak, rss_kib(lb, "VmHWM"))
    rss_after = {"lb": rss_kib(lb), "workers": sum(rss_kib(p) for p in server.role("worker"))}
    server.stop()

    failed = sum(c for s, c in tally.statuses.items() if not 200 <= s < 300)
    worker_kills = kills["worker"] + kills["app"]
    transport = sum(tally.errors.values())
    # Away from LB kills, a response cut short is the one request a killed
    # worker or app had in flight once its answer had begun (no 502 can be
    # sent then); any other error there is a lost request.
    elsewhere = Counter(tally.errors) - lb_reset_errors
    cut_short = elsewhere.pop("IncompleteRead", 0)
    lost = sum(elsewhere.values())
    print("soak: %.1f min, %d clients, %s app, w:%d, kills every %.1f s, %d LB kills"
          % (args.minutes, args.clients, args.runtime, WORKERS, args.kill_every, args.lb_kills))
    print("requests:           %d (%.0f/s)" % (tally.requests, tally.requests / (args.minutes * 60)))
    print("answers by status:  %s" % dict(sorted(tally.statuses.items())))
    for (status, body), count in sorted(tally.failures.items()):
        print("  %d x %d %r" % (count, status, body))
    print("no answer:          %d %s" % (transport, dict(tally.errors) if transport else ""))
    print("  at LB kills:      %d" % sum(lb_reset_errors.values()))
    print("  cut short:        %d (responses begun when their worker or app was killed)" % cut_short)
    print("  otherwise lost:   %d %s" % (lost, dict(elsewhere) if lost else ""))
    print("corrupted echoes:   %d" % tally.corrupt)
    print("kills:              %d worker, %d app, %d lb" % (kills["worker"], kills["app"], kills["lb"]))
    print("failed answers:     %d (+ %d cut short) for %d worker/app kills (%s)"
          % (failed, cut_short, worker_kills,
             "ok" if failed + cut_short <= worker_kills else "MORE THAN KILLS"))
    print("workers back:       %s, %.1f s after the last kill" % ("yes" if back else "NO", back_after))
    print("1 GiB echo:         %s" % ("byte-exact" if upload_ok else "FAILED"))
    print("RSS (MiB):          LB %.1f before, %.1f peak, %.1f after; workers %.1f before, %.1f after (sum), %.1f peak (one)"
          % (rss_before["lb"] / 1024, lb_peak / 1024, rss_after["lb"] / 1024,
             rss_before["workers"] / 1024, rss_after["workers"] / 1024, worker_peak / 1024))
    ok = (failed + cut_short <= worker_kills and tally.corrupt == 0 and back and upload_ok
          and lost == 0)
    print("verdict:            %s" % ("PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
