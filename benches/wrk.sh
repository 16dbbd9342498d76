#!/usr/bin/env bash
# Measures rip-server with wrk: starts a release build serving APP with
# W workers on a free port, runs wrk at each concurrency, prints one line
# per run, and stops the server.
#
#   benches/wrk.sh [APP] [W] [SECONDS] [CONCURRENCIES...]
#   benches/wrk.sh examples/hello 2 10 2 16 64
set -euo pipefail
cd "$(dirname "$0")/.."
app=${1:-builtin:hello}
workers=${2:-2}
seconds=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
concurrencies=("${@:-2 16 64}")
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 2; }

cargo build --release --quiet
dir=$(mktemp -d /tmp/ripbench.XXXXXX)
out="$dir/stdout"
./target/release/rip-server "$app" http:0 "w:$workers" --no-access-log \
  --socket-dir="$dir" >"$out" 2>"$dir/stderr" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 200); do
  grep -q "serving" "$out" 2>/dev/null && break
  sleep 0.05
done
port=$(grep -oE 'http://[^ ]+:[0-9]+' "$out" | grep -oE '[0-9]+$')
for _ in $(seq 200); do
  curl -fs "http://127.0.0.1:$port/status" | grep -q '"status":"healthy"' && break
  sleep 0.05
done
path=/ping
echo "app=$app workers=$workers seconds=$seconds port=$port"
for c in ${concurrencies[*]}; do
  result=$(wrk -t1 -c"$c" -d"${seconds}s" --latency "http://127.0.0.1:$port$path")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$result")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$result")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$result")
  errors=$(grep -E 'Non-2xx|Socket errors' <<<"$result" | tr '\n' ' ' || true)
  echo "c=$c req/s=$rps p50=$p50 p99=$p99 $errors"
done
