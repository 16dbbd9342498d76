#!/usr/bin/env python3
"""Slow clients: do they take the workers away? rip-server vs HAProxy `maxconn 1`.

Every app process serves one request at a time. A client that uploads at a
trickle, or reads its answer at a trickle, holds that process for as long
as it takes -- unless the proxy in front reads the whole request before
handing it over (rip-server's --request-buffering=on) and takes the app's
whole answer as fast as the app writes it (--response-buffering=on: up to
64 KiB in memory, then an unnamed temp file, up to --buffer-disk for all
responses together; past that, the client's pace). This measures what that
buys. Targets, each started fresh, one after another in the same run:

  rip        rip-server benches/apps/slow w:2 r:0 --no-access-log
             --hot-reload=none (its defaults otherwise: both bufferings on)
  haproxy    HAProxy maxconn 1 per server in front of 2 app processes on unix
             sockets, configured as benches/load.py does (nbthread 1,
             leastconn, http-reuse always, timeout queue 2s)
  rip-nobuf  rip with --request-buffering=off --response-buffering=off, the
             old behaviour: shows the mechanism

App: benches/apps/slow/index.js under Bun: GET /ping -> "pong", POST
/upload reads the body and answers its length, GET /big?n=BYTES -> n bytes
with a Content-Length.

Per target: a fast client (`wrk -t1 -c2 --latency --timeout 5s` on /ping, or
load.py's Python client without wrk) alone for --baseline s (unloaded), then
for --duration s the slow load --
  --uploaders (100) threads, each POSTing --upload-size (100000) bytes,
      --upload-chunk (1000) bytes every --upload-interval (0.1) s, so 10 s
      an upload, then reading the answer; in a loop
  --readers (100) threads, each GETting /big?n=--big (20000000) with
      SO_RCVBUF --rcvbuf (4096), reading at --read-rate (200000) B/s; in a
      loop (at 200 KB/s a 20 MB answer takes 100 s, longer than a run: the
      downloads in flight when the run ends are counted apart, "cut")
-- all starting evenly over the first --spread (1) s -- and the fast client
again during it (from 2 s in to 1 s before the end; --quick: from 1 s).
A slow request that fails (a non-2xx answer, a reset, a stall of 30 s)
waits 0.5 s before its client tries again. Meanwhile it polls, every 0.2 s,
the proxy's RSS (rip-server's `lb` process, or haproxy) and the temp files
it holds (the `(deleted)` entries among /proc/<pid>/fd: count and sizes),
and rip-server's /status (busy workers, queue). After the slow clients stop
it waits up to 10 s for the temp files to go, then stops the target and
looks in its socket dir. It prints one table, a column per target, and the
issue's criteria (for rip-server; shown for every target), PASS or FAIL:
the fast client keeps >= 80% of its unloaded req/s (2xx answers only), its
loaded p99 < 50 ms, no worker replaced, proxy peak RSS <= 64 MiB, every temp
file gone (none left open after the run, nothing left in the socket dir
after the stop).

Sizes to keep in mind: the readers ask for readers x big bytes at once (at
the defaults 100 x 20 MB = 2 GB), which rip-server keeps in temp files only
up to --buffer-disk (default 1G) -- past that a response goes at its
client's pace and holds its worker, as with buffering off. And the app
takes a while to write that much (2 GB through 2 workers: seconds), during
which /ping waits in the queue; --spread spreads that out.
`--rip-args=--buffer-disk=3G --spread 6` shows rip-server with room for the
whole load.

Run it from anywhere, after a release build (needs bun, haproxy, wrk):

  cargo build --release
  python3 benches/slow.py                  # 20 s of slow load per target, 100+100 slow clients (~2 min)
  python3 benches/slow.py --quick          # 6 s, 20+20 slow clients, 3 s uploads (~1 min)
  python3 benches/slow.py --targets rip --duration 30 --timeline
  python3 benches/slow.py --targets rip --rip-args=--buffer-disk=3G --spread 6
  python3 benches/slow.py --quick --keep    # keep the servers' logs, print where

A missing HAProxy only drops its column. Everything listens on 127.0.0.1;
processes are stopped by pid and temp dirs removed, also on Ctrl-C.
"""
import argparse
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  -- the targets, /proc helpers and the Python client

APP = load.App("slow", "slow", "bun", "/ping")
IO_TIMEOUT = 5  # connect, and a blocked send
STALL = 30  # seconds without a byte before a slow request counts as failed
BACKOFF = 0.5  # pause after a failed slow request
POLL = 0.2  # seconds between samples of the proxy
SETTLE = 10  # seconds to wait, after the load, for the temp files to go
WORKER_READY = re.compile(r"worker \d+ ready \(pid")
RSS_LIMIT, RATIO_LIMIT, P99_LIMIT = 64, 0.80, 50.0


# ---------------------------------------------------------------------------
# Targets


class Rip(load.Rip):
    name = "rip"
    flags = []

    def __init__(self, tmp, rip_args):
        super().__init__(APP, tmp, ["r:0"] + self.flags + rip_args)

    def start(self):
        super().start()
        self.pid = self.find_lb()

    def proxy_pid(self):
        return self.pid

    def refind(self):
        self.pid = self.find_lb()
        return self.pid

    def socket_dir(self):
        return os.path.join(self.dir, "s")

    def replaced(self):
        return self.workers_started() - load.WORKERS

    def log_lines(self):
        """The server log's lines written since the last call."""
        with open(self.log, "rb") as f:
            f.seek(getattr(self, "log_read", 0))
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.log_read = getattr(self, "log_read", 0) + end
        return data[:end].decode("utf-8", "replace").splitlines()

    def status(self):
        got = load.http_get(self.port, "/status")
        if got and got[0] == 200:
            return json.loads(got[1])
        return None


class RipNobuf(Rip):
    name = "rip-nobuf"
    flags = ["--request-buffering=off", "--response-buffering=off"]


class Haproxy(load.Haproxy):
    def __init__(self, tmp, _rip_args):
        super().__init__(APP, tmp)

    def proxy_pid(self):
        return self.haproxy.pid

    def refind(self):
        return self.haproxy.pid if self.haproxy.poll() is None else None

    def socket_dir(self):
        return self.dir

    def replaced(self):
        return None

    def log_lines(self):
        return []

    def status(self):
        return None


TARGETS = {"rip": Rip, "haproxy": Haproxy, "rip-nobuf": RipNobuf}


# ---------------------------------------------------------------------------
# /proc


def proc_status(pid, field):
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM) in MiB, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None


def open_files(pid):
    """(temp files, their bytes, their allocated bytes, sockets, all fds) of a process:
    temp files are the fds whose link ends in " (deleted)"."""
    base = "/proc/%d/fd" % pid
    files = size = alloc = sockets = total = 0
    try:
        fds = os.listdir(base)
    except OSError:
        return None
    for fd in fds:
        path = os.path.join(base, fd)
        try:
            link = os.readlink(path)
        except OSError:
            continue
        total += 1
        if link.startswith("socket:"):
            sockets += 1
        elif link.endswith(" (deleted)"):
            try:
                st = os.stat(path)
            except OSError:
                continue
            files += 1
            size += st.st_size
            alloc += st.st_blocks * 512
    return files, size, alloc, sockets, total


class Monitor(threading.Thread):
    """Samples the proxy every POLL s: RSS, temp files, fds, and rip-server's /status."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.target = target
        self.samples = []  # (t, rss MiB, temp files, temp bytes, temp alloc, sockets, fds, busy, queued, started)
        self.started = 0  # workers started so far (rip-server's log)
        self.notes = []
        self.halt = threading.Event()
        self.pid = target.proxy_pid()
        self.born = start_time(self.pid)
        self.t0 = time.monotonic()

    def run(self):
        while not self.halt.is_set():
            self.sample(status=True)
            self.halt.wait(POLL)

    def sample(self, status=False):
        if start_time(self.pid) != self.born:
            pid = self.target.refind()
            self.notes.append("%.1f s: proxy process %d gone%s" % (
                time.monotonic() - self.t0, self.pid, ", now %d" % pid if pid else ""))
            if not pid:
                self.halt.set()
                return None
            self.pid, self.born = pid, start_time(pid)
        files = open_files(self.pid) or (0, 0, 0, 0, 0)
        busy = queued = None
        if status:
            st = self.target.status()
            if st:
                busy, queued = st.get("busy"), st.get("queued")
        self.started += sum(1 for line in self.target.log_lines() if WORKER_READY.search(line))
        row = (time.monotonic() - self.t0, proc_status(self.pid, "VmRSS")) + files + (busy, queued, self.started)
        self.samples.append(row)
        return row

    def peak(self, index, since=0.0):
        values = [s[index] for s in self.samples if s[0] >= since and s[index] is not None]
        return max(values) if values else None

    def mean(self, index, since, until):
        values = [s[index] for s in self.samples if since <= s[0] <= until and s[index] is not None]
        return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------
# Slow clients (threads; each returns its own Counter, summed at the end)


class Cut(Exception):
    """The run ended while this request was in flight."""


class Stalled(Exception):
    """Nothing came for STALL seconds."""


def recv_some(sock, n, deadline, stop):
    started = time.monotonic()
    while True:
        now = time.monotonic()
        if stop.is_set() or now >= deadline:
            raise Cut
        try:
            return sock.recv(n)
        except socket.timeout:
            if now - started > STALL:
                raise Stalled from None


def read_head(sock, deadline, stop, bufsize=65536):
    """(status, content-length or None, body bytes already read) of a response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = recv_some(sock, bufsize, deadline, stop)
        if not data:
            raise ConnectionError("closed before the response head" if not buf else "closed mid-head")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, length, rest


def read_small_body(sock, length, rest, deadline, stop):
    body = rest
    while length is None or len(body) < length:
        data = recv_some(sock, 65536, deadline, stop)
        if not data:
            break
        body += data
    return body


def wait_until(when, deadline, stop):
    """Sleeps until `when` (monotonic); raises Cut if the run ends first."""
    while True:
        now = time.monotonic()
        if stop.is_set() or now >= deadline:
            raise Cut
        if now >= when:
            return
        time.sleep(min(when, deadline) - now)


def outcome(tally, kind, why=None):
    tally[kind] += 1
    if why is not None:
        tally["why " + why] += 1
    return kind


def upload_once(addr, args, deadline, stop, tally):
    size, chunk = args.upload_size, b"x" * args.upload_chunk
    with socket.create_connection(addr, timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (addr[1], size))
        started, sent, k = time.monotonic(), 0, 0
        early = False
        while sent < size:
            if select.select([sock], [], [], 0)[0]:
                early = True  # the proxy answered (or closed) before the body was all sent
                break
            n = min(len(chunk), size - sent)
            try:
                sock.sendall(chunk[:n])
            except OSError:
                early = True  # read what answer there is
                break
            sent += n
            tally["bytes"] += n
            k += 1
            if sent < size:
                wait_until(started + k * args.upload_interval, deadline, stop)
        sock.settimeout(0.25)
        status, length, rest = read_head(sock, deadline, stop)
        body = read_small_body(sock, length, rest, deadline, stop)
    if 200 <= status < 300 and not early and body.strip() == str(size).encode():
        return outcome(tally, "done")
    return outcome(tally, "failed", "%d" % status if not 200 <= status < 300 else "%d, body %r" % (status, body[:40]))


def download_once(addr, args, deadline, stop, tally):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)  # before connect: the window
        sock.settimeout(IO_TIMEOUT)
        sock.connect(addr)
        sock.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % (args.big, addr[1]))
        sock.settimeout(0.25)
        status, length, rest = read_head(sock, deadline, stop, args.rcvbuf)
        if status != 200:
            read_small_body(sock, min(length or 0, 4096), rest, deadline, stop)
            return outcome(tally, "failed", "%d" % status)
        got, started = len(rest), time.monotonic()
        tally["bytes"] += got
        while length is None or got < length:
            wait_until(started + got / args.read_rate, deadline, stop)
            data = recv_some(sock, args.rcvbuf if length is None else min(args.rcvbuf, length - got), deadline, stop)
            if not data:
                if length is None:
                    break
                return outcome(tally, "failed", "short: %d of %d bytes" % (got, length))
            got += len(data)
            tally["bytes"] += len(data)
    return outcome(tally, "done")


def slow_client(once, addr, args, deadline, stop, start_at, tally):
    try:
        wait_until(start_at, deadline, stop)
    except Cut:
        return
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            result = once(addr, args, deadline, stop, tally)
        except Cut:
            tally["cut"] += 1
            return
        except Stalled:
            result = outcome(tally, "failed", "stalled %d s" % STALL)
        except (OSError, ValueError, IndexError) as err:
            result = outcome(tally, "failed", type(err).__name__)
        if result == "failed":
            try:
                wait_until(time.monotonic() + BACKOFF, deadline, stop)
            except Cut:
                return


class SlowLoad:
    def __init__(self, port, args, stop):
        self.start = time.monotonic()
        self.deadline = self.start + args.duration
        addr = ("127.0.0.1", port)
        self.uploads = [Counter() for _ in range(args.uploaders)]
        self.downloads = [Counter() for _ in range(args.readers)]
        self.threads = []
        ramp = min(args.spread, args.duration / 2)
        for kind, tallies in ((upload_once, self.uploads), (download_once, self.downloads)):
            for i, tally in enumerate(tallies):
                at = self.start + ramp * i / max(len(tallies), 1)
                thread = threading.Thread(target=slow_client, daemon=True,
                                          args=(kind, addr, args, self.deadline, stop, at, tally))
                thread.start()
                self.threads.append(thread)

    def join(self):
        for thread in self.threads:
            thread.join(max(self.deadline - time.monotonic(), 0) + 5)
        return sum(self.uploads, Counter()), sum(self.downloads, Counter())


# ---------------------------------------------------------------------------
# The fast client


def fast_command(client, port, seconds):
    if client == "wrk":
        return ["wrk", "-t1", "-c2", "-d%ds" % seconds, "--latency", "--timeout", "5s",
                "http://127.0.0.1:%d/ping" % port]
    return load.load_command("python", port, APP, 2, seconds, None)


def parse_fast(text):
    """load.parse_wrk, but robust to a run with no answer at all; adds ok_rps (2xx only)."""
    try:
        result = load.parse_wrk(text)
    except (AttributeError, ValueError):
        rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
        requests = re.search(r"(\d+) requests in", text)
        result = {"rps": float(rps.group(1)) if rps else 0.0, "requests": int(requests.group(1)) if requests else 0,
                  "p50": None, "p99": None, "non2xx": 0, "errors": 0}
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
        result["errors"] = sum(map(int, errors.groups())) if errors else 0
    if result["requests"] == 0:
        result["p50"] = result["p99"] = None
    result["ok_rps"] = result["rps"] * (result["requests"] - result["non2xx"]) / max(result["requests"], 1)
    return result


def fast_run(client, port, seconds):
    output, cpu = load.run_load(fast_command(client, port, seconds), seconds)
    result = parse_fast(output)
    result["cpu"] = cpu
    return result


# ---------------------------------------------------------------------------
# One target


def log_digest(text):
    """rip-server's warnings and errors, and the app's failed handlers, grouped with numbers blanked."""
    kinds = Counter()
    for line in text.splitlines():
        ours = re.match(r"rip-server\[([^\]]+)\] (warning|error): (.*)", line)
        if ours:
            kinds["[%s] %s: %s" % ours.groups()] += 1
        elif re.match(r"\[worker \d+\] .*(request handler failed|panicked)", line):
            kinds[line] += 1
    grouped = Counter()
    for message, count in kinds.items():
        grouped[re.sub(r"\d+", "N", message)[:160]] += count
    return grouped


def bench(name, tmp, args):
    target = TARGETS[name](tmp, args.rip_args)
    r = {"name": name}
    monitor = None
    stop = threading.Event()  # ends the slow clients early (Ctrl-C)
    try:
        target.start()
        monitor = Monitor(target)
        monitor.start()
        print("  [%s] up on port %d; warm-up %d s, unloaded %d s" % (name, target.port, args.warmup, args.baseline),
              file=sys.stderr)
        fast_run(args.client, target.port, args.warmup)
        r["unloaded"] = fast_run(args.client, target.port, args.baseline)
        time.sleep(0.5)
        cpu_before, busy_before, self_before = target.cpu(), load.machine_busy(), self_cpu()
        print("  [%s] slow load %d s: %d uploaders, %d readers; fast client from %d s for %d s"
              % (name, args.duration, args.uploaders, args.readers, args.ramp, args.fast_seconds), file=sys.stderr)
        slow = SlowLoad(target.port, args, stop)
        load_t0 = slow.start - monitor.t0
        wait_until_or_stop(slow.start + args.ramp, stop)
        r["loaded"] = fast_run(args.client, target.port, args.fast_seconds)
        r["uploads"], r["downloads"] = slow.join()
        elapsed = time.monotonic() - slow.start
        cpu_after, busy = target.cpu(), load.machine_busy() - busy_before
        r["cpu"] = {g: cpu_after[g] - cpu_before[g] for g in cpu_before}
        r["cpu"]["slow clients"] = self_cpu() - self_before
        r["cpu"]["wrk"] = r["loaded"]["cpu"]
        r["other"] = max(busy - sum(r["cpu"].values()), 0) / elapsed
        r["elapsed"] = elapsed
        load_end = time.monotonic() - monitor.t0
        # The slow clients are gone: the temp files should go too.
        monitor.halt.set()
        monitor.join()
        settle_until = time.monotonic() + SETTLE
        while True:
            row = monitor.sample(status=True)
            if row is None or row[2] == 0 or time.monotonic() > settle_until:
                break
            time.sleep(0.1)
        r["settle_s"] = time.monotonic() - monitor.t0 - load_end
        last = monitor.samples[-1] if monitor.samples else None
        r["temp_left"] = (last[2], last[3]) if last else None
        r["rss_end"] = last[1] if last else None
        pid = target.proxy_pid()
        hwm = proc_status(pid, "VmHWM") if pid else None
        peaks = [v for v in (hwm, monitor.peak(1)) if v is not None]
        r["rss_peak"] = max(peaks) if peaks else None
        r["rss_idle"] = monitor.samples[0][1] if monitor.samples else None
        r["temp_peak_files"], r["temp_peak_bytes"] = monitor.peak(2), monitor.peak(3)
        r["temp_peak_alloc"], r["sockets_peak"] = monitor.peak(4), monitor.peak(5)
        r["busy_mean"] = monitor.mean(7, load_t0 + args.ramp, load_t0 + args.ramp + args.fast_seconds)
        r["queued_peak"] = monitor.peak(8, load_t0)
        r["samples"], r["load_t0"] = monitor.samples, load_t0
        r["notes"] = list(monitor.notes)
        r["replaced"] = target.replaced()
        r["sockdir_running"] = loose_files(target.socket_dir())
        if isinstance(target, Rip):
            r["log"] = log_digest(target.read_log())
    finally:
        stop.set()
        if monitor is not None:
            monitor.halt.set()
        target.stop()
    r["sockdir_after"] = [f for f in listing(target.socket_dir())
                          if not (isinstance(target, load.Haproxy) and f.endswith((".log", ".cfg")))]
    return r


def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def loose_files(path):
    """What a socket dir holds besides sockets, pid files, logs and rip-server's copy of its loader."""
    found = []
    for name in listing(path):
        try:
            mode = os.lstat(os.path.join(path, name)).st_mode
        except OSError:
            continue
        if not stat.S_ISSOCK(mode) and not name.endswith((".pid", ".log", ".cfg", ".loader.mjs")):
            found.append(name)
    return found


def wait_until_or_stop(when, stop):
    while not stop.is_set() and time.monotonic() < when:
        time.sleep(min(0.1, max(when - time.monotonic(), 0)))


def self_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------
# Report


def mib(n):
    return "-" if n is None else "%.1f" % (n / 2**20)


def ms(v):
    return "-" if v is None else "%.2f" % v


def why(tally, top=3):
    reasons = [(k[4:], v) for k, v in tally.most_common() if k.startswith("why ")]
    return ", ".join("%s x%d" % kv for kv in reasons[:top]) + (", ..." if len(reasons) > top else "")


def criteria(r):
    """[(criterion, value, PASS/FAIL/-)]"""
    u, l = r["unloaded"], r["loaded"]
    ratio = l["ok_rps"] / u["ok_rps"] if u["ok_rps"] else None
    p99 = l["p99"]
    left_open = r["temp_left"][0] if r["temp_left"] else None
    rows = [
        ("fast req/s loaded >= %d%% of unloaded" % (RATIO_LIMIT * 100),
         "-" if ratio is None else "%.0f%%" % (100 * ratio), ratio is not None and ratio >= RATIO_LIMIT),
        ("fast p99 loaded < %d ms" % P99_LIMIT, ms(p99) + " ms" if p99 is not None else "no answer",
         p99 is not None and p99 < P99_LIMIT and l["requests"] > 0),
        ("no worker replaced", "-" if r["replaced"] is None else str(r["replaced"]),
         None if r["replaced"] is None else r["replaced"] == 0),
        ("proxy peak RSS <= %d MiB" % RSS_LIMIT, fmt1(r["rss_peak"]) + " MiB",
         r["rss_peak"] is not None and r["rss_peak"] <= RSS_LIMIT),
        ("temp files gone after the run", "%s open after, socket dir after stop: %s"
         % ("-" if left_open is None else left_open, " ".join(r["sockdir_after"]) or "empty"),
         left_open == 0 and not r["sockdir_after"]),
    ]
    return [(c, v, "-" if ok is None else "PASS" if ok else "FAIL") for c, v, ok in rows]


def fmt1(v):
    return "-" if v is None else "%.1f" % v


def print_report(results, args):
    names = [r["name"] for r in results]
    width = max(18, *(len(n) + 2 for n in names))

    def row(label, values):
        print("%-38s" % label + "".join("%*s" % (width, v) for v in values).rstrip())

    print()
    print("Slow load: %d s, %d uploaders (%d B at %d B per %.2f s), %d readers (GET /big?n=%d, SO_RCVBUF %d, %d B/s);"
          " fast client %s -c2 on /ping: %d s unloaded, then %d s during the slow load."
          % (args.duration, args.uploaders, args.upload_size, args.upload_chunk, args.upload_interval, args.readers,
             args.big, args.rcvbuf, args.read_rate, args.client, args.baseline, args.fast_seconds))
    print("req/s counts 2xx answers only. cut = in flight when the run ended. Temp files: the (deleted) fds of the"
          " proxy, peak of the sum of their sizes (and count).")
    row("", names)
    row("", ["-" * (width - 2)] * len(names))
    get = lambda f: [f(r) for r in results]  # noqa: E731
    row("fast req/s unloaded", get(lambda r: "%.0f" % r["unloaded"]["ok_rps"]))
    row("fast req/s loaded", get(lambda r: "%.0f" % r["loaded"]["ok_rps"]))
    row("  loaded / unloaded", get(lambda r: "%.2f" % (r["loaded"]["ok_rps"] / r["unloaded"]["ok_rps"])
                                   if r["unloaded"]["ok_rps"] else "-"))
    row("fast p50 / p99 ms unloaded", get(lambda r: "%s / %s" % (ms(r["unloaded"]["p50"]), ms(r["unloaded"]["p99"]))))
    row("fast p50 / p99 ms loaded", get(lambda r: "%s / %s" % (ms(r["loaded"]["p50"]), ms(r["loaded"]["p99"]))))
    row("fast non-2xx / socket errors, loaded", get(lambda r: "%d / %d" % (r["loaded"]["non2xx"], r["loaded"]["errors"])))
    row("  (unloaded)", get(lambda r: "%d / %d" % (r["unloaded"]["non2xx"], r["unloaded"]["errors"])))
    row("slow uploads done / failed / cut", get(lambda r: "%d / %d / %d" % (
        r["uploads"]["done"], r["uploads"]["failed"], r["uploads"]["cut"])))
    row("  MB sent", get(lambda r: "%.1f" % (r["uploads"]["bytes"] / 1e6)))
    row("slow downloads done / failed / cut", get(lambda r: "%d / %d / %d" % (
        r["downloads"]["done"], r["downloads"]["failed"], r["downloads"]["cut"])))
    row("  MB read (MB/s)", get(lambda r: "%.0f (%.1f)" % (r["downloads"]["bytes"] / 1e6,
                                                         r["downloads"]["bytes"] / 1e6 / r["elapsed"])))
    row("proxy RSS MiB idle / peak / end", get(lambda r: "%s/%s/%s" % (fmt1(r["rss_idle"]), fmt1(r["rss_peak"]),
                                                                      fmt1(r["rss_end"]))))
    row("temp files peak MiB (files)", get(lambda r: "%s (%s)" % (mib(r["temp_peak_bytes"]), r["temp_peak_files"])))
    row("  allocated on disk, peak MiB", get(lambda r: mib(r["temp_peak_alloc"])))
    row("temp files open after the load", get(lambda r: "%d (%.1f s)" % (r["temp_left"][0], r["settle_s"])
                                             if r["temp_left"] else "-"))
    row("proxy sockets, peak", get(lambda r: fmt0(r["sockets_peak"])))
    row("workers replaced", get(lambda r: fmt0(r["replaced"])))
    row("workers busy (mean of 2), loaded", get(lambda r: fmt1(r["busy_mean"]) if r["busy_mean"] is not None else "-"))
    row("queued, peak", get(lambda r: fmt0(r["queued_peak"])))
    row("CPU s: proxy / app", get(lambda r: "%.1f / %.1f" % (r["cpu"]["proxy"], r["cpu"]["app"])))
    row("CPU s: slow clients / wrk", get(lambda r: "%.1f / %.1f" % (r["cpu"]["slow clients"], r["cpu"]["wrk"])))
    row("other CPUs busy (noise)", get(lambda r: "%.2f" % r["other"]))
    for r in results:
        print()
        print("%s:" % r["name"])
        for criterion, value, verdict in criteria(r):
            print("  %-4s %-40s %s" % (verdict, criterion, value))
        for kind in ("uploads", "downloads"):
            if r[kind]["failed"]:
                print("  %s failed: %s" % (kind, why(r[kind])))
        if r["sockdir_running"]:
            print("  note: files in the socket dir after the load: " + " ".join(r["sockdir_running"]))
        for note in r["notes"]:
            print("  note: " + note)
        for message, count in (r.get("log") or Counter()).most_common(8):
            print("  log x%d: %s" % (count, message))
        if args.timeline:
            print("  timeline (s from the slow load's start: RSS MiB, temp MiB/files, sockets, busy, queued,"
                  " workers started):")
            step = max(1, int(1 / POLL))
            for s in r["samples"][::step]:
                print("    %6.1f  %6s  %8s/%-4d %5d  %4s %5s %4s" % (
                    s[0] - r["load_t0"], fmt1(s[1]), mib(s[3]), s[2], s[5], fmt0(s[7]), fmt0(s[8]),
                    fmt0(s[9]) if isinstance(r.get("replaced"), int) else "-"))


def fmt0(v):
    return "-" if v is None else "%d" % v


def header(args):
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    commit = load.first_line(["git", "-C", load.ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", load.ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(load.BIN)))
    print("command:    %s" % shlex.join([sys.executable] + sys.argv))
    print("date:       %s" % time.strftime("%Y-%m-%d %H:%M:%S %z"))
    print("machine:    %d CPUs, %s, kernel %s, load average %s"
          % (len(os.sched_getaffinity(0)), model, os.uname().release, load.loadavg()))
    print("rip-server: %s%s, binary built %s" % (commit, " + uncommitted changes in src/" if dirty else "", built))
    print("bun %s, %s, fast client %s" % (load.first_line(["bun", "--version"]), load.first_line([load.HAPROXY, "-v"]),
                                          load.first_line(["wrk", "-v"]) if args.client == "wrk" else
                                          "load.py's Python client"))
    print("rip:        %s %s http:0 w:%d --no-access-log --hot-reload=none --socket-dir=<tmp> r:0%s --runtime=bun"
          % (load.BIN, os.path.join(load.APPS_DIR, "slow"), load.WORKERS,
             "".join(" " + a for a in args.rip_args)))
    sys.stdout.flush()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 s of slow load, 20+20 slow clients, 3 s baseline")
    parser.add_argument("--targets", default="rip,haproxy,rip-nobuf", help="comma-separated, from: " + ",".join(TARGETS))
    parser.add_argument("--duration", type=int, help="seconds of slow load per target (default 20; quick 6)")
    parser.add_argument("--baseline", type=int, help="seconds of the unloaded fast run (default 5; quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured fast load first (default 1)")
    parser.add_argument("--uploaders", type=int, help="slow uploaders (default 100; quick 20)")
    parser.add_argument("--readers", type=int, help="slow readers (default 100; quick 20)")
    parser.add_argument("--upload-size", type=int, default=100_000, help="bytes per upload (default 100000)")
    parser.add_argument("--upload-chunk", type=int, default=1000, help="bytes per trickle (default 1000)")
    parser.add_argument("--upload-interval", type=float,
                        help="seconds between trickles (default 0.1; quick 0.03, so that uploads end within the run)")
    parser.add_argument("--big", type=int, default=20_000_000, help="bytes per download (default 20000000)")
    parser.add_argument("--read-rate", type=int, default=200_000, help="bytes/s each reader reads (default 200000)")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="seconds over which the slow clients start, evenly (default 1)")
    parser.add_argument("--rcvbuf", type=int, default=4096, help="readers' SO_RCVBUF (default 4096)")
    parser.add_argument("--client", choices=("wrk", "python"), help="fast client (default wrk if installed)")
    parser.add_argument("--rip-args", default="", help="more rip-server flags for the rip targets, e.g. --buffer-disk=4G")
    parser.add_argument("--timeline", action="store_true", help="print the proxy's samples, one a second")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (the servers' logs) and print its path")
    args = parser.parse_args()
    args.targets = args.targets.split(",")
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error("unknown target %s (known: %s)" % (",".join(unknown), ",".join(TARGETS)))
    args.duration = args.duration or (6 if args.quick else 20)
    args.baseline = args.baseline or (3 if args.quick else 5)
    args.uploaders = args.uploaders if args.uploaders is not None else (20 if args.quick else 100)
    args.readers = args.readers if args.readers is not None else (20 if args.quick else 100)
    args.upload_interval = args.upload_interval or (0.03 if args.quick else 0.1)
    args.ramp = 2 if args.duration >= 10 else 1
    args.fast_seconds = max(1, args.duration - args.ramp - 1)
    args.client = args.client or ("wrk" if shutil.which("wrk") else "python")
    args.rip_args = shlex.split(args.rip_args)
    return args


def main():
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if not os.path.exists(load.BIN):
        sys.exit("build first: cargo build --release")
    if "haproxy" in args.targets and not os.path.exists(load.HAPROXY):
        print("haproxy: not found at %s, its column is skipped" % load.HAPROXY)
        args.targets.remove("haproxy")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    threading.stack_size(512 * 1024)
    header(args)
    tmp = tempfile.mkdtemp(prefix="ripslow.")
    results, failed = [], []
    started = time.monotonic()
    try:
        for name in args.targets:
            try:
                results.append(bench(name, tmp, args))
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                failed.append("%s: %s" % (name, load.one_line(err)))
                print("  [%s] failed: %s" % (name, load.one_line(err)), file=sys.stderr)
        if results:
            print_report(results, args)
        for note in failed:
            print("NOTE: target failed: " + note)
    finally:
        if args.keep:
            print("kept: %s (server.log of each rip target, haproxy.log, app logs)" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("took %.0f s; load average now %s" % (time.monotonic() - started, load.loadavg()))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; everything started was stopped")
