#!/usr/bin/env python3
"""Side-by-side load benchmark: rip-server vs HAProxy vs the app alone.

For each app it starts these targets once (they stay up across repeats):

  rip            rip-server <app> http:0 w:2 r:0 --no-access-log --hot-reload=none
                 like for like with HAProxy, which logs nothing, reloads
                 nothing and never replaces an app process; rip-server's
                 defaults otherwise (`--rip-args` changes the r:0).
  rip-default    rip-server <app> http:0 w:2, as the README's quick start
                 runs it: r:10000 recycling, the access log (to a file), the
                 default hot reload
  haproxy-plain  what a user would build instead: HAProxy (nbthread 1,
                 balance leastconn, maxconn 1 per server, http-reuse always,
                 rip-server's default timeouts) in front of 2 plain app
                 processes on unix sockets, no loader: Bun.serve({unix}) with
                 the app's fetch handler, or node:http listening on the socket
                 (benches/apps/direct-*.mjs with SOCKET)
  haproxy        the same HAProxy in front of 2 app processes run by
                 rip-server's own loader (src/apps/loader.mjs): the proxy
                 alone compared
  direct         the app alone on TCP, the ceiling: 2 Bun.serve processes
                 sharing the port (reusePort), or node:cluster with 2 workers
  rip-base       with --rip-baseline=<binary>: `rip` run by that other
                 rip-server build (an earlier commit's), for an A/B

warms each up for a second, then loads them with `wrk -t1 -c<C> -d<D>s
--latency` (or `oha`, `--client oha`) at each concurrency C, interleaved
(rip, rip-default, haproxy-plain, haproxy, direct, rip, ...) so that machine
noise hits every target alike, and reports the median, min and max of the
repeats of each cell (5 by default), with a warning where the spread passes
10%. Per run it records req/s,
p50, p99, non-2xx responses, socket errors, the proxy's RSS at the end of the
run (rip-server's `lb` process, or haproxy), roughly how many workers
rip-server replaced during the run, the CPU time (utime+stime from /proc,
children included once reaped) of each process group -- the proxy, the app
side (rip-server's workers and their apps, or the app processes) and wrk --
and how many CPUs everything else on the machine kept busy meanwhile (noise).
CPU is reported in microseconds per request: the figure that stays put
where req/s moves with the machine's noise. It prints one table, the ratios
of rip and rip-default to haproxy-plain (and rip/haproxy, rip/direct), and
any run or target that failed. `--smoke` (CI) runs each target once,
briefly, and fails unless every target answered 2xx with no socket error --
it asserts nothing about speed.

Apps (benches/apps/):
  bun-ping   ping/index.js under Bun, answers "pong"           GET  /ping
  node-ping  the same under Node                                GET  /ping
  builtin    rip-server's builtin:hello (rip only)              GET  /ping
  1ms        sleep1/index.js under Bun: waits 1 ms, answers     GET  /ping
  echo64k    echo/index.js under Bun, streams the body back     POST /echo, 64 KiB

Run it from anywhere, after a release build (needs wrk, bun, node, haproxy):

  cargo build --release
  python3 benches/load.py               # full: 10 s runs, c=2,16,64,256, every app (~30 min)
  python3 benches/load.py --quick       # 2 s runs, c=2,64, bun-ping,builtin,1ms (< 2 min)
  python3 benches/load.py --apps bun-ping,1ms --conc 64 --duration 5 --repeats 3
  python3 benches/load.py --c1000-rss   # then rip-server's LB RSS after c=64 and c=1000
  python3 benches/load.py --smoke       # ~20 s: every target answers 2xx (CI)

HTTPS (`--https`): the same apps behind rip-server's `https:` port (rustls)
and behind HAProxy's `bind ... ssl crt` (OpenSSL), both serving one
self-signed ECDSA P-256 certificate made for the run, loaded with `wrk
https://...` on kept-alive connections; `--close` adds `Connection: close`
to every request, so each is a new connection and a full handshake (wrk
resumes no session): req/s is then handshakes/s. Targets rip, rip-default,
haproxy-plain and haproxy; the LB MiB column at c=1000 is the memory of a
thousand TLS connections.

  python3 benches/load.py --https --apps bun-ping --conc 2,64,1000 --duration 5
  python3 benches/load.py --https --close --apps bun-ping --conc 2,64 --duration 5

A missing HAProxy only drops its rows (install: apt-get install haproxy).
Without wrk (or with --client python) a built-in single-threaded Python
client does the load; it costs about 1.5x wrk's CPU per request, which it
takes from the servers on a small machine, so its numbers are lower and only
compare targets with each other within one run. Everything listens on
127.0.0.1; temp files, sockets and processes are removed at the end.
"""
import argparse
import http.client
import json
import os
import re
import resource
import select
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where cargo put the release build (CARGO_TARGET_DIR, as cargo reads it, relative to the repository).
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"), "release", "rip-server")
APPS_DIR = os.path.join(ROOT, "benches", "apps")
LOADER = os.path.join(ROOT, "src", "apps", "loader.mjs")
HAPROXY = "/usr/sbin/haproxy"
WORKERS = 2  # app processes per target; --workers changes it
TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30  # seconds any target may take to come up
STOP_TIMEOUT = 15  # seconds any target may take to stop (rip-server's own limit is 10)
TLS = None  # --https: the Tls every target serves
CLOSE = False  # --close: a new connection (and handshake) per request


class Tls:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost, made
    with openssl in `tmp`: cert.pem + key.pem (rip-server), both.pem (HAProxy)."""

    def __init__(self, tmp):
        self.cert, self.key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        self.both = os.path.join(tmp, "both.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        with open(self.both, "w") as f:
            f.write(open(self.cert).read() + open(self.key).read())


@dataclass
class App:
    name: str
    source: str  # an app directory under benches/apps, or builtin:<name>
    runtime: str | None  # bun | node; None for a built-in app
    path: str
    body: int = 0  # bytes POSTed with each request; 0 = GET

    @property
    def entry(self):
        return os.path.join(APPS_DIR, self.source, "index.js")


APPS = {
    "bun-ping": App("bun-ping", "ping", "bun", "/ping"),
    "node-ping": App("node-ping", "ping", "node", "/ping"),
    "builtin": App("builtin", "builtin:hello", None, "/ping"),
    "1ms": App("1ms", "sleep1", "bun", "/ping"),
    "echo64k": App("echo64k", "echo", "bun", "/echo", body=64 * 1024),
}


# ---------------------------------------------------------------------------
# /proc


def proc_table():
    """{pid: (ppid, own CPU ticks, reaped children's CPU ticks, start time)}."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                            int(fields[13]) + int(fields[14]), int(fields[19]))
    return table


def descendants(pid, table):
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, row in table.items() if row[0] == parent]
        found += kids
        todo += kids
    return found


def tree_cpu(pid, table):
    """CPU seconds of pid and everything below it, living or reaped."""
    pids = [p for p in [pid] + descendants(pid, table) if p in table]
    return sum(table[p][1] + table[p][2] for p in pids) / TICK


def machine_busy():
    """CPU seconds all CPUs have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK  # minus idle and iowait


def role(pid):
    """argv[1] of a rip-server process: manager, lb, worker."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return argv[1].decode() if len(argv) > 1 else None


def rss_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def kill_tree(proc, timeout):
    """SIGTERM a process we started, wait, then SIGKILL it and what it started."""
    if proc.poll() is not None:
        return
    table = proc_table()
    kids = [(p, table[p][3]) for p in descendants(proc.pid, table)]
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        table = proc_table()
        alive = [p for p, start in kids if p in table and table[p][3] == start]
        if not alive:
            return
        time.sleep(0.05)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# Waiting for things to come up


def wait_for(check, what, procs=()):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError("%s: process %d exited (%s)" % (what, proc.pid, proc.returncode))
        time.sleep(0.02)
    raise RuntimeError("%s: not up within %d s" % (what, START_TIMEOUT))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        conn.close()


def unix_ready(path):
    """Does the app on this unix socket answer GET /ready with 200?"""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def read_lines(proc, count, what):
    """Wait for `count` lines on a process's stdout (its "ready" signal)."""
    for _ in range(count):
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        if not ready or not proc.stdout.readline():
            raise RuntimeError("%s: no ready line (exit status %s)" % (what, proc.poll()))


# ---------------------------------------------------------------------------
# Targets: start() brings one up (or raises), then port, cpu(), rss(), stop()


class Target:
    name = ""
    restarts = 0  # workers replaced so far (rip-server only)

    def __init__(self, app, tmp):
        self.app = app
        self.dir = tempfile.mkdtemp(prefix=self.name + "-", dir=tmp)
        self.procs = []

    def start(self):
        raise NotImplementedError

    def spawn(self, cmd, log, stdout=None, **kw):
        """Starts a process with its stderr (and stdout unless given) in a log file."""
        log_file = open(os.path.join(self.dir, log), "w")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout or log_file, stderr=log_file, **kw)
        log_file.close()
        self.procs.append(proc)
        return proc

    def cpu(self):
        """{group: CPU seconds so far}; groups are "proxy" and "app"."""
        raise NotImplementedError

    def rss(self):
        return None

    def stop(self):
        for proc in reversed(self.procs):
            kill_tree(proc, STOP_TIMEOUT)


class Rip(Target):
    name = "rip"
    bin = BIN
    # Like for like with HAProxy: no access log, no reload watching.
    flags = ["--no-access-log", "--hot-reload=none"]

    def __init__(self, app, tmp, extra_args):
        super().__init__(app, tmp)
        self.extra_args = extra_args
        self.log = os.path.join(self.dir, "server.log")

    def start(self):
        app = self.app
        tls = ["https:0", "--cert=" + TLS.cert, "--key=" + TLS.key] if TLS else []
        cmd = [self.bin, os.path.join(APPS_DIR, app.source) if app.runtime else app.source,
               "http:0", "w:%d" % WORKERS] + tls + self.flags + [
               "--socket-dir=" + os.path.join(self.dir, "s")] + self.extra_args
        if app.runtime:
            cmd.append("--runtime=" + app.runtime)
        self.manager = self.spawn(cmd, "server.log")
        line = wait_for(lambda: re.search(r"rip-server: serving .* on http://\S+:(\d+)(?: and https://\S+:(\d+))? with",
                                          self.read_log()),
                        "rip-server", self.procs)
        self.port = int(line.group(1))
        if TLS:
            self.tls_port = int(line.group(2))
        wait_for(self.healthy, "rip-server /status", self.procs)
        wait_for(self.find_lb, "rip-server lb")
        self.started = self.workers_started()

    def read_log(self):
        with open(self.log) as f:
            return f.read()

    def healthy(self):
        got = http_get(self.port, "/status")
        if not got or got[0] != 200:
            return False
        status = json.loads(got[1])
        return status["status"] == "healthy" and status["workers"] == WORKERS

    def find_lb(self):
        table = proc_table()
        kids = [p for p, row in table.items() if row[0] == self.manager.pid]
        return next((p for p in kids if role(p) == "lb"), None)

    def workers_started(self):
        return len(re.findall(r"worker \d+ ready \(pid", self.read_log()))

    @property
    def restarts(self):
        return self.workers_started() - self.started

    def cpu(self):
        table = proc_table()
        lb = self.find_lb()
        kids = [p for p, row in table.items() if row[0] == self.manager.pid]
        workers = sum(tree_cpu(p, table) for p in kids if role(p) == "worker")
        reaped = table[self.manager.pid][2] / TICK  # workers already replaced, with their apps
        return {"proxy": tree_cpu(lb, table), "app": workers + reaped}

    def rss(self):
        return rss_mib(self.find_lb())


class RipBase(Rip):
    """`rip` run by another rip-server binary (--rip-baseline): an A/B of
    two builds, side by side in one run."""
    name = "rip-base"

    def __init__(self, app, tmp, extra_args, binary):
        super().__init__(app, tmp, extra_args)
        self.bin = binary


class RipDefault(Rip):
    """rip-server as the README's quick start runs it: every default (r:10000
    recycling, the access log, the default hot reload), stdout to a file."""
    name = "rip-default"
    flags = []

    def __init__(self, app, tmp, _extra_args):
        super().__init__(app, tmp, [])


class Haproxy(Target):
    name = "haproxy"

    def start(self):
        sockets = self.start_apps()
        self.port = free_port()
        config = os.path.join(self.dir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(haproxy_config(self.port, sockets, self.tls_bind()))
        self.haproxy = self.spawn([HAPROXY, "-db", "-f", config], "haproxy.log", stdout=subprocess.DEVNULL)
        wait_for(lambda: (http_get(self.port, "/ready") or (0,))[0] == 200, "haproxy", self.procs)

    def tls_bind(self):
        """--https: HAProxy's TLS listener (beside its plain one, for the health check)."""
        if not TLS:
            return ""
        self.tls_port = free_port()
        return "    bind 127.0.0.1:%d ssl crt %s alpn http/1.1\n" % (self.tls_port, TLS.both)

    def start_apps(self):
        """The apps HAProxy fronts: rip-server's loader, each on its own unix socket."""
        sockets = []
        for i in range(WORKERS):
            sock = os.path.join(self.dir, "w%d.sock" % i)
            env = dict(os.environ, RIP_SOCKET=sock, RIP_ENTRY=self.app.entry, RIP_WORKER_ID=str(i),
                       RIP_APP_NAME=self.app.source, RIP_HOT_RELOAD="none")
            self.spawn([self.app.runtime, LOADER], "app%d.log" % i, env=env,
                       cwd=os.path.dirname(self.app.entry), stdout=subprocess.DEVNULL)
            sockets.append(sock)
        for sock in sockets:
            wait_for(lambda: unix_ready(sock), "haproxy's app on " + sock, self.procs)
        return sockets

    def cpu(self):
        table = proc_table()
        apps = [p.pid for p in self.procs if p is not self.haproxy]
        return {"proxy": tree_cpu(self.haproxy.pid, table), "app": sum(tree_cpu(p, table) for p in apps)}

    def rss(self):
        return rss_mib(self.haproxy.pid)


class HaproxyPlain(Haproxy):
    """HAProxy in front of plain app processes: what a user would run
    instead of rip-server."""
    name = "haproxy-plain"

    def start_apps(self):
        sockets = []
        script = os.path.join(APPS_DIR, "direct-%s.mjs" % self.app.runtime)
        for i in range(WORKERS):
            sock = os.path.join(self.dir, "p%d.sock" % i)
            env = dict(os.environ, SOCKET=sock, APP_ENTRY=self.app.entry)
            proc = self.spawn([self.app.runtime, script], "plain%d.log" % i, env=env,
                              cwd=os.path.dirname(self.app.entry), stdout=subprocess.PIPE, text=True)
            read_lines(proc, 1, "plain " + self.app.runtime)
            sockets.append(sock)
        return sockets


def haproxy_config(port, sockets, tls_bind=""):
    servers = "".join("    server w%d %s maxconn 1\n" % (i, s) for i, s in enumerate(sockets))
    return (
        "global\n"
        "    nbthread 1\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 200ms\n"
        "    timeout queue 2s\n"
        "    timeout server 5s\n"
        "    timeout client 30s\n"
        "frontend front\n"
        "    bind 127.0.0.1:%d\n"
        "%s"
        "    default_backend apps\n"
        "backend apps\n"
        "    balance leastconn\n"
        "    http-reuse always\n" % (port, tls_bind)
    ) + servers


class Direct(Target):
    name = "direct"

    def start(self):
        runtime = self.app.runtime
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), APP_ENTRY=self.app.entry, WORKERS=str(WORKERS))
        script = os.path.join(APPS_DIR, "direct-%s.mjs" % runtime)
        # Bun: WORKERS processes sharing the port; Node: one cluster primary.
        for i in range(WORKERS if runtime == "bun" else 1):
            proc = self.spawn([runtime, script], "direct%d.log" % i, env=env,
                              cwd=os.path.dirname(self.app.entry), stdout=subprocess.PIPE, text=True)
            read_lines(proc, 1, "direct " + runtime)

    def cpu(self):
        table = proc_table()
        return {"app": sum(tree_cpu(p.pid, table) for p in self.procs)}


# ---------------------------------------------------------------------------
# Load


def load_command(client, target, app, conc, seconds, lua):
    if TLS:
        url = "https://127.0.0.1:%d%s" % (target.tls_port, app.path)
    else:
        url = "http://127.0.0.1:%d%s" % (target.port, app.path)
    close = ["-H", "Connection: close"] if CLOSE else []
    if client == "wrk":
        return (["wrk", "-t1", "-c%d" % conc, "-d%ds" % seconds, "--latency"] + close
                + (["-s", lua] if app.body else []) + [url])
    if client == "oha":
        body = ["-m", "POST", "-d", "x" * app.body] if app.body else []
        # -w: requests in flight at the deadline finish (else they count as errors).
        tls = ["--insecure"] if TLS else []
        return (["oha", "--no-tui", "--output-format", "json", "-w", "-c", str(conc), "-z", "%ds" % seconds]
                + close + tls + body + [url])
    return [sys.executable, os.path.abspath(__file__), "--python-client", url, str(conc), str(seconds), str(app.body)]


def run_load(cmd, seconds):
    """Runs the load generator; returns its output and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not ("Requests/sec" in done.stdout or '"requestsPerSec"' in done.stdout):
        raise RuntimeError("%s failed: %s%s" % (shlex.join(cmd), done.stdout, done.stderr))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return done.stdout, cpu


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(text):
    def latency(pct):
        value, unit = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m|h)\s*$" % pct, text, re.M).groups()
        return float(value) * UNITS_MS[unit]

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "p50": latency(50),
        "p99": latency(99),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(map(int, errors.groups())) if errors else 0,
    }


def parse_oha(text):
    """oha's --output-format json, as parse_wrk's numbers."""
    report = json.loads(text)
    summary, status = report["summary"], report.get("statusCodeDistribution", {})
    requests = sum(status.values())
    ok = sum(n for code, n in status.items() if code.startswith(("2", "3")))
    percentiles = report["latencyPercentiles"]
    return {
        "rps": summary["requestsPerSec"],
        "requests": requests,
        "p50": percentiles["p50"] * 1000,
        "p99": percentiles["p99"] * 1000,
        "non2xx": requests - ok,
        "errors": sum(report.get("errorDistribution", {}).values()),
    }


def measure(target, app, conc, seconds, client, lua):
    """One measured run against a target; returns its numbers."""
    cmd = load_command(client, target, app, conc, seconds, lua)
    cpu_before, restarts_before = target.cpu(), target.restarts
    busy_before, started = machine_busy(), time.monotonic()
    output, client_cpu = run_load(cmd, seconds)
    busy, elapsed = machine_busy() - busy_before, time.monotonic() - started
    cpu_after = target.cpu()
    result = parse_oha(output) if client == "oha" else parse_wrk(output)
    # CPU microseconds per request.
    per_request = 1e6 / max(result["requests"], 1)
    ours = client_cpu
    for group in cpu_before:
        used = cpu_after[group] - cpu_before[group]
        ours += used
        result[group + "_cpu"] = used * per_request
    result["client_cpu"] = client_cpu * per_request
    # Answers that are not 2xx/3xx (a full queue's 503s, say) are fast and
    # say nothing of serving: the ratios count the others only.
    result["ok_rps"] = result["rps"] * (result["requests"] - result["non2xx"]) / max(result["requests"], 1)
    result["other"] = max(busy - ours, 0) / elapsed
    result["rss"] = target.rss()
    result["restarts"] = target.restarts - restarts_before
    return result


# ---------------------------------------------------------------------------
# The Python fallback load client (run as a subprocess, prints wrk's format)


def parse_response(buf):
    """(status, keep-alive, rest of buf) once buf holds a whole response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip().lower() for k, v in (line.split(":", 1) for line in lines[1:])}
    pos = end + 4
    if "chunked" in headers.get("transfer-encoding", ""):
        size = None
        while size != 0:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2 + size + 2
    else:
        pos += int(headers.get("content-length", "0"))
    if len(buf) < pos:
        return None
    return int(lines[0].split()[1]), headers.get("connection") != "close", buf[pos:]


class ClientConnection:
    """One keep-alive connection of the Python client, always one request in flight."""

    def __init__(self, selector, address, request, stats):
        self.selector, self.address, self.request, self.stats = selector, address, request, stats
        self.sock = None

    def send(self):
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=2)
                self.selector.register(self.sock, selectors.EVENT_READ, self)
                self.buf = b""
            self.started = time.perf_counter()
            self.sock.sendall(self.request)
        except OSError:
            self.stats["connect" if self.sock is None else "write"] += 1
            self.close()

    def on_readable(self):
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.stats["read"] += 1
            return self.close()
        self.buf += data
        response = parse_response(self.buf)
        if response is None:
            return
        status, keep, self.buf = response
        self.stats["latencies"].append(time.perf_counter() - self.started)
        self.stats["non2xx"] += not 200 <= status < 400
        if not keep:
            self.close()
        self.send()

    def close(self):
        if self.sock is not None:
            self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None


def python_client(url, conc, seconds, body_size):
    """A dependency-free stand-in for wrk -t1: one thread, conc keep-alive connections."""
    host, port, path = re.match(r"http://([^:/]+):(\d+)(/.*)", url).groups()
    body = b"x" * int(body_size)
    request = ("%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %d\r\n\r\n"
               % ("POST" if body else "GET", path, host, port, len(body))).encode() + body
    stats = {"latencies": [], "non2xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    selector = selectors.DefaultSelector()
    conns = [ClientConnection(selector, (host, int(port)), request, stats) for _ in range(int(conc))]
    started = time.perf_counter()
    deadline, next_check = started + int(seconds), started
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if now >= next_check:  # (re)connect closed connections, time out stuck requests
            next_check = now + 0.1
            for conn in conns:
                if conn.sock is None:
                    conn.send()
                elif now - conn.started > 2:
                    stats["timeout"] += 1
                    conn.close()
        for key, _ in selector.select(timeout=0.1):
            key.data.on_readable()
    elapsed = time.perf_counter() - started
    latencies = sorted(stats["latencies"])
    print("  Latency Distribution")
    for pct in (50, 99):
        value = latencies[min(len(latencies) - 1, len(latencies) * pct // 100)] if latencies else 0
        print("     %d%%   %.2fms" % (pct, value * 1000))
    print("  %d requests in %.2fs" % (len(latencies), elapsed))
    print("  Non-2xx or 3xx responses: %d" % stats["non2xx"])
    print("  Socket errors: connect %(connect)d, read %(read)d, write %(write)d, timeout %(timeout)d" % stats)
    print("Requests/sec: %.2f" % (len(latencies) / elapsed))


# ---------------------------------------------------------------------------
# Report


def first_line(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def header(client, rip_args):
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    commit = first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(BIN)))
    print("command:    %s" % shlex.join([sys.executable] + sys.argv))
    print("date:       %s" % time.strftime("%Y-%m-%d %H:%M:%S %z"))
    print("machine:    %d CPUs (nproc), %s, kernel %s, load average %s"
          % (len(os.sched_getaffinity(0)), model, os.uname().release, loadavg()))
    print("rip-server: %s%s, binary built %s" % (commit, " + uncommitted changes in src/" if dirty else "", built))
    print("bun %s, node %s, %s" % (first_line(["bun", "--version"]), first_line(["node", "--version"]),
                                   first_line([HAPROXY, "-v"])))
    print("rip:        %s <app> http:0 w:%d --no-access-log --hot-reload=none --socket-dir=<tmp> [--runtime=bun|node]%s"
          % (BIN, WORKERS, "".join(" " + a for a in rip_args)))
    print("rip-default: %s <app> http:0 w:%d --socket-dir=<tmp> [--runtime=bun|node] > <file>" % (BIN, WORKERS))
    if TLS:
        print("https:      every target adds an HTTPS port (rip: https:0 --cert --key; HAProxy: bind ... ssl crt,"
              " %s) with one self-signed P-256 certificate; the load goes there" % first_line(["openssl", "version"]))
    if CLOSE:
        print("close:      every request says Connection: close (a new connection%s each)"
              % (" and a full TLS handshake" if TLS else ""))
    generator = {"wrk": lambda: first_line(["wrk", "-v"]), "oha": lambda: first_line(["oha", "--version"])}
    print("load gen:   %s" % (generator[client]() if client in generator else "built-in Python client "
                              "(costlier than wrk: compare targets only with each other)"))
    sys.stdout.flush()


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def fmt(value, spec):
    return "-" if value is None else spec % value


def median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def spread(runs):
    """Range of req/s over the repeats, in % of the median."""
    rates = [r["rps"] for r in runs]
    return 100 * (max(rates) - min(rates)) / statistics.median(rates) if len(rates) > 1 else 0


# A cell whose req/s range over the repeats passes this (in % of its
# median) is flagged: its ratios say less than they seem to.
NOISY = 10.0


def print_table(results, client_name):
    print()
    print("Median, min and max req/s over the repeats; ±%%: that range in %% of the median (! past %.0f%%)."
          " p50, p99: medians. non-2xx, errors, replaced: totals over the repeats (replaced = rip-server"
          " workers recycled during the runs). LB MiB: RSS of rip-server's lb or of haproxy at the end of a"
          " run. µs/req: CPU microseconds per request of the proxy, the app side (workers + apps) and %s"
          " (medians). other: CPUs kept busy by everything else on the machine during the run (noise)."
          % (NOISY, client_name))
    columns = ("%-9s %5s %-13s %8s %8s %8s %6s %8s %8s %8s %7s %8s %7s %9s %9s %9s %6s"
               % ("app", "conc", "target", "req/s", "min", "max", "±%", "p50 ms", "p99 ms", "non-2xx",
                  "errors", "replaced", "LB MiB", "µs proxy", "µs app", "µs " + client_name, "other"))
    print(columns)
    print("-" * len(columns))
    noisy = []
    for (app, conc, target), runs in results.items():
        rates = [r["rps"] for r in runs]
        flag = "!" if spread(runs) > NOISY else " "
        if flag == "!":
            noisy.append("%s c=%d %s" % (app, conc, target))
        print("%-9s %5d %-13s %8.0f %8.0f %8.0f %5.1f%s %8.3f %8.3f %8d %7d %8s %7s %9s %9s %9.1f %6.2f" % (
            app, conc, target, median(runs, "rps"), min(rates), max(rates), spread(runs), flag,
            median(runs, "p50"), median(runs, "p99"),
            sum(r["non2xx"] for r in runs), sum(r["errors"] for r in runs),
            sum(r["restarts"] for r in runs) if target.startswith("rip") else "-",
            fmt(median(runs, "rss"), "%.1f"), fmt(median(runs, "proxy_cpu"), "%.1f"),
            fmt(median(runs, "app_cpu"), "%.1f"), median(runs, "client_cpu"), median(runs, "other")))
    if noisy:
        print()
        print("WARNING: req/s moved more than %.0f%% over the repeats in %d cell(s): %s. Compare their ratios"
              " with care, or rerun with more --repeats on a quieter machine."
              % (NOISY, len(noisy), ", ".join(noisy)))


def ratio(results, app, conc, ours, other, key):
    """Our target's median over another target's in one cell, or "-"."""
    mine, them = results.get((app, conc, ours)), results.get((app, conc, other))
    return "%.2f" % (median(mine, key) / median(them, key)) if mine and them and median(them, key) else "-"


# The ratios printed: (ours, theirs, key, heading).
RATIOS = (
    ("rip", "haproxy-plain", "ok_rps", "rip/plain req/s"),
    ("rip", "haproxy-plain", "p99", "rip/plain p99"),
    ("rip-default", "haproxy-plain", "ok_rps", "default/plain req/s"),
    ("rip-default", "haproxy-plain", "p99", "default/plain p99"),
    ("rip", "haproxy", "ok_rps", "rip/haproxy req/s"),
    ("rip", "haproxy", "p99", "rip/haproxy p99"),
    ("rip", "direct", "ok_rps", "rip/direct req/s"),
    ("rip", "rip-base", "ok_rps", "rip/base req/s"),
    ("rip", "rip-base", "p99", "rip/base p99"),
)


def print_capacity(results):
    """The 1 ms app's req/s against its ceiling, WORKERS x 1000 req/s (one
    request at a time per app process, 1 ms each)."""
    ceiling = WORKERS * 1000
    # `direct` has no one-request-at-a-time cap, so no ceiling either.
    rows = [(conc, target, median(runs, "rps")) for (app, conc, target), runs in results.items()
            if app == "1ms" and target != "direct"]
    if rows:
        print()
        print("1ms app against its ceiling of %d req/s (w:%d x 1000):" % (ceiling, WORKERS))
        for conc, target, rps in rows:
            print("  c=%-5d %-13s %8.0f req/s  %5.1f%%" % (conc, target, rps, 100 * rps / ceiling))


def print_ratios(results):
    rows = []
    for app, conc in dict.fromkeys((app, conc) for app, conc, _ in results):
        row = tuple(ratio(results, app, conc, ours, theirs, key) for ours, theirs, key, _ in RATIOS)
        if any(cell != "-" for cell in row):
            rows.append((app, conc) + row)
    if rows:
        print()
        print("Ratios of medians (plain = haproxy-plain, the user's alternative; haproxy: the same proxy"
              " in front of rip-server's loader). req/s counts 2xx/3xx answers only.")
        widths = [max(len(heading), 5) for *_, heading in RATIOS]
        print("%-9s %5s " % ("app", "conc") + " ".join("%*s" % (w, h) for w, (*_, h) in zip(widths, RATIOS)))
        for app, conc, *cells in rows:
            print("%-9s %5d " % (app, conc) + " ".join("%*s" % (w, c) for w, c in zip(widths, cells)))


# ---------------------------------------------------------------------------
# Main


TARGETS = ("rip", "rip-default", "haproxy-plain", "haproxy", "direct", "rip-base")


def candidates(app, tmp, args):
    targets = [Rip(app, tmp, args.rip_args), RipDefault(app, tmp, [])]
    if args.rip_baseline:
        targets.append(RipBase(app, tmp, args.rip_args, args.rip_baseline))
    if app.runtime:
        if os.path.exists(HAPROXY):
            targets += [HaproxyPlain(app, tmp), Haproxy(app, tmp)]
        if not TLS:
            targets.append(Direct(app, tmp))
    return [t for t in targets if t.name in args.targets]


def one_line(err):
    text = " ".join(str(err).split())
    return text if len(text) < 300 else text[:300] + "..."


def bench_app(app, tmp, args, lua, results, notes):
    """Starts the app's targets, warms them up, runs every cell interleaved, stops them."""
    targets = []
    try:
        for target in candidates(app, tmp, args):
            targets.append(target)
            try:
                target.start()
                if args.warmup:
                    run_load(load_command(args.client, target, app, 16, args.warmup, lua), args.warmup)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                notes.append("%s: %s did not start: %s" % (app.name, target.name, one_line(err)))
                target.stop()
                targets.pop()
        for rep in range(args.repeats):
            for conc in args.conc:
                for target in targets:
                    run = "%s c=%d %s #%d" % (app.name, conc, target.name, rep + 1)
                    try:
                        result = measure(target, app, conc, args.duration, args.client, lua)
                    except (RuntimeError, subprocess.TimeoutExpired) as err:
                        notes.append("%s failed: %s" % (run, one_line(err)))
                        print("  [%s] failed" % run, file=sys.stderr)
                        continue
                    results.setdefault((app.name, conc, target.name), []).append(result)
                    print("  [%s] %.0f req/s, p99 %.3f ms, non-2xx %d, errors %d, other %.2f CPUs"
                          % (run, result["rps"], result["p99"], result["non2xx"], result["errors"],
                             result["other"]), file=sys.stderr)
    finally:
        for target in targets:
            target.stop()


def c1000_rss(tmp, args, lua):
    """rip-server's LB memory after c=64 and after c=1000 kept-alive connections."""
    app = APPS["bun-ping"]
    seconds = min(args.duration, 5)
    rip = Rip(app, tmp, args.rip_args)
    try:
        rip.start()
        print()
        print("rip-server (bun-ping) LB RSS: %.1f MiB idle" % rip.rss())
        for conc in (64, 1000):
            result = measure(rip, app, conc, seconds, args.client, lua)
            print("  after c=%-4d %ds: %.1f MiB  (%.0f req/s, p99 %.3f ms, non-2xx %d, errors %d)"
                  % (conc, seconds, result["rss"], result["rps"], result["p99"], result["non2xx"], result["errors"]))
    finally:
        rip.stop()


def smoke_verdict(args, results, notes):
    """--smoke: every target of every app ran and answered 2xx only, with no
    socket error. Returns the exit status."""
    failures = list(notes)
    if not os.path.exists(HAPROXY):
        failures.append("haproxy is not installed at %s: its targets did not run" % HAPROXY)
    for name in args.apps:
        for target in TARGETS:
            if target not in args.targets or (APPS[name].runtime is None and target not in ("rip", "rip-default")):
                continue
            if TLS and target == "direct" or target == "rip-base" and not args.rip_baseline:
                continue
            runs = results.get((name, args.conc[0], target))
            if not runs:
                failures.append("%s %s: no run" % (name, target))
                continue
            bad = [r for r in runs if r["non2xx"] or r["errors"] or not r["requests"]]
            if bad:
                failures.append("%s %s: %d requests, %d non-2xx, %d socket errors"
                                % (name, target, bad[0]["requests"], bad[0]["non2xx"], bad[0]["errors"]))
    print()
    if failures:
        for failure in failures:
            print("SMOKE FAILED: " + failure)
        return 1
    print("smoke: every target answered 2xx only, with no socket error")
    return 0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 s runs, c=2,64, apps bun-ping,builtin,1ms (under 2 minutes on 2 cores)")
    parser.add_argument("--apps", help="comma-separated, from: " + ",".join(APPS))
    parser.add_argument("--conc", help="comma-separated concurrencies (default 2,16,64,256)")
    parser.add_argument("--duration", type=int, help="seconds per run (default 10; wrk takes whole seconds)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs per cell, median, min and max reported (default 5)")
    parser.add_argument("--warmup", type=int, help="seconds of unmeasured load per target at start (default 1)")
    parser.add_argument("--client", choices=("wrk", "oha", "python"),
                        help="load generator (default wrk if installed, else the built-in Python client)")
    parser.add_argument("--workers", type=int, default=2,
                        help="app processes per target: rip-server's w:N, HAProxy's servers, direct's processes"
                             " (default 2)")
    parser.add_argument("--targets", help="comma-separated, from: " + ",".join(TARGETS) + " (default all)")
    parser.add_argument("--smoke", action="store_true",
                        help="one 1 s run per target of bun-ping and node-ping at c=4; fails unless each"
                             " answered 2xx with no socket error (CI; asserts nothing about speed)")
    parser.add_argument("--rip-args", default="r:0",
                        help='rip-server tokens and flags added to the command line (default "r:0")')
    parser.add_argument("--rip-baseline", metavar="BINARY",
                        help="also run `rip` with this rip-server binary (target rip-base; e.g. a build of"
                             " an earlier commit) and print rip/base: an A/B of two builds in one run")
    parser.add_argument("--https", action="store_true",
                        help="load the HTTPS ports (rip-server's rustls, HAProxy's OpenSSL) with one self-signed"
                             " P-256 certificate; no direct target")
    parser.add_argument("--close", action="store_true",
                        help="Connection: close on every request: a new connection, and with --https a full"
                             " handshake, per request")
    parser.add_argument("--c1000-rss", action="store_true",
                        help="after the runs, print rip-server's LB RSS after c=64 and c=1000")
    args = parser.parse_args()
    if args.smoke:
        args.apps, args.conc = args.apps or "bun-ping,node-ping", args.conc or "4"
        args.duration, args.repeats, args.warmup = args.duration or 1, 1, 0
    quick = args.quick
    args.apps = (args.apps or ("bun-ping,builtin,1ms" if quick else ",".join(APPS))).split(",")
    unknown = [a for a in args.apps if a not in APPS]
    if unknown:
        parser.error("unknown app %s (known: %s)" % (",".join(unknown), ",".join(APPS)))
    args.conc = [int(c) for c in (args.conc or ("2,64" if quick else "2,16,64,256")).split(",")]
    args.duration = args.duration or (2 if quick else 10)
    args.warmup = 1 if args.warmup is None else args.warmup
    args.targets = (args.targets or ",".join(TARGETS)).split(",")
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error("unknown target %s (known: %s)" % (",".join(unknown), ",".join(TARGETS)))
    args.client = args.client or ("wrk" if shutil.which("wrk") else "python")
    if args.rip_baseline and not os.access(args.rip_baseline, os.X_OK):
        parser.error("--rip-baseline: %s is not an executable" % args.rip_baseline)
    if args.https and args.client == "python":
        parser.error("--https needs wrk or oha (the built-in client speaks plain HTTP only)")
    args.rip_args = shlex.split(args.rip_args)
    return args


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "--python-client":
        return python_client(*sys.argv[2:])
    args = parse_args()
    global WORKERS, TLS, CLOSE
    WORKERS, CLOSE = args.workers, args.close
    sys.stdout.reconfigure(line_buffering=True)
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # wrk -c1000 and the Python client
    tmp = tempfile.mkdtemp(prefix="ripload.")
    if args.https:
        try:
            TLS = Tls(tmp)
        except (OSError, subprocess.CalledProcessError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit("cannot make the benchmark's certificate with openssl: %s" % one_line(err))
    header(args.client, args.rip_args)
    if not os.path.exists(HAPROXY):
        print("haproxy:    not found at %s, its rows are skipped (install: apt-get install haproxy)" % HAPROXY)
    lua = os.path.join(tmp, "post64k.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n')
    results, notes = {}, []
    started = time.monotonic()
    status = 0
    try:
        for name in args.apps:
            bench_app(APPS[name], tmp, args, lua, results, notes)
        print_table(results, args.client if args.client != "python" else "client")
        print_ratios(results)
        print_capacity(results)
        for note in notes:
            print("NOTE: " + note)
        if args.smoke:
            status = smoke_verdict(args, results, notes)
        if args.c1000_rss:
            c1000_rss(tmp, args, lua)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("took %.0f s; load average now %s" % (time.monotonic() - started, loadavg()))
    return status


if __name__ == "__main__":
    sys.exit(main())
