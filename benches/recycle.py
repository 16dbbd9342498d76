#!/usr/bin/env python3
"""What one worker recycle costs in CPU.

Two rip-server instances of the same app run side by side, one with
`r:<N>` (a worker is replaced every N requests) and one with `r:0`; each
takes the same wrk load in turn. The CPU of each whole process tree (the
manager, the LB, the workers and their apps, with the children already
reaped counted through their parents' cutime) per request differs by the
cost of the replacements: (µs/req at r:N − µs/req at r:0) × N is the CPU
of one recycle. Prints that for each round, and the median.

  python3 benches/recycle.py                      # bun-ping, r:1000, c=2, 3 rounds
  python3 benches/recycle.py --every 10000 --conc 64 --rounds 5
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "rip-server")
APPS = {"bun-ping": ("ping", "bun"), "node-ping": ("ping", "node")}
TICK = os.sysconf("SC_CLK_TCK")


def tree(pid):
    try:
        children = open("/proc/%d/task/%d/children" % (pid, pid)).read().split()
    except OSError:
        return [pid]
    out = [pid]
    for child in children:
        out += tree(int(child))
    return out


def tree_cpu(root):
    """CPU seconds of `root` and its descendants, reaped ones included."""
    total = 0
    for pid in tree(root):
        try:
            fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def start(app, every, tmp):
    source, runtime = APPS[app]
    sockets = tempfile.mkdtemp(dir=tmp)
    log = open(os.path.join(sockets, "out"), "w")
    cmd = [BIN, os.path.join(ROOT, "benches", "apps", source), "http:0", "w:2", "r:%d" % every,
           "--runtime=" + runtime, "--no-access-log", "--hot-reload=none", "--socket-dir=" + sockets]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        text = open(os.path.join(sockets, "out")).read()
        if "all 2 workers ready" in text:
            port = re.search(r"on http://\S+:(\d+)", text).group(1)
            return proc, "http://127.0.0.1:%s/" % port
        time.sleep(0.1)
    proc.terminate()
    sys.exit("rip-server did not start: " + text)


def load(url, conc, seconds):
    """Requests wrk completed in `seconds`."""
    out = subprocess.run(["wrk", "-t1", "-c%d" % conc, "-d%ds" % seconds, url],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def measure(proc, url, conc, seconds):
    time.sleep(1)  # replacements of the last round settle
    before = tree_cpu(proc.pid)
    requests = load(url, conc, seconds)
    time.sleep(1)
    return (tree_cpu(proc.pid) - before) / requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="bun-ping", choices=sorted(APPS))
    parser.add_argument("--every", type=int, default=1000, help="requests per worker (r:N)")
    parser.add_argument("--conc", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rip-recycle-") as tmp:
        never, never_url = start(args.app, 0, tmp)
        often, often_url = start(args.app, args.every, tmp)
        try:
            for url in (never_url, often_url):
                load(url, args.conc, 1)  # warm up
            costs = []
            for round_ in range(args.rounds):
                base = measure(never, never_url, args.conc, args.seconds)
                recycled = measure(often, often_url, args.conc, args.seconds)
                cost = (recycled - base) * args.every
                costs.append(cost)
                print("round %d: r:0 %.1f µs/req, r:%d %.1f µs/req -> %.1f ms CPU per recycle"
                      % (round_ + 1, base * 1e6, args.every, recycled * 1e6, cost * 1e3))
            print("median: %.1f ms CPU per recycle (%s, c=%d, w:2)"
                  % (statistics.median(costs) * 1e3, args.app, args.conc))
        finally:
            for proc in (never, often):
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
