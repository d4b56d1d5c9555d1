#!/usr/bin/env bash
# Soak test: builds the release binaries, starts a gateway with a soak config in a temporary
# directory (development certificates, limits raised for one machine's clients), runs
# `wsgate-bench --churn` against it for MINUTES minutes, and writes the JSON lines (and, when
# matplotlib is importable, the plot) into OUT.
#
#   tools/soak/run.sh [MINUTES] [OUT] [-- extra wsgate-bench flags]
#   tools/soak/run.sh 30 tools/soak/results -- --connect-rate 500 --open 5000 --publish-rate 1000
#
# Environment: SOAK_PORT / SOAK_ADMIN_PORT (default 28443 / 29090), PYTHON (for the plot,
# default python3), SOAK_SKIP_BUILD=1 to use the binaries already in target/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

minutes=${1:-30}
out=${2:-tools/soak/results}
shift $(($# < 2 ? $# : 2))
[ "${1:-}" = "--" ] && shift
port=${SOAK_PORT:-28443}
admin_port=${SOAK_ADMIN_PORT:-29090}

if [ -z "${SOAK_SKIP_BUILD:-}" ]; then
  cargo build --release --locked -p wsgate -p wsgate-bench
fi
gateway=$root/target/release/wsgate
bench=$root/target/release/wsgate-bench

mkdir -p "$out"
out=$(cd "$out" && pwd)
jsonl=$out/soak.jsonl
: >"$jsonl"

tmp=$(mktemp -d)
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Thousands of sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$gateway" gen-cert --out "$tmp/certs" --host localhost >/dev/null
secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
api_key=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
cat >"$tmp/wsgate.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
static_dir = ""
max_connections = 100000
handshake_timeout = "5s"
# Short timers, so the stalled clients are found and closed well within the run.
ping_interval = "5s"
idle_timeout = "15s"
shutdown_grace = "5s"

[tls]
cert = "$tmp/certs/server.crt"
key = "$tmp/certs/server.key"

[origin]
allowed = ["https://localhost"]
allow_missing = true

[auth]
algorithms = ["HS256"]
hs_secret = "$secret"

[limits]
# Every client comes from 127.0.0.1: the per-address limits would stop the churn.
handshakes_per_ip_per_minute = 100000000
max_connections_per_ip = 100000
handshakes_in_flight_per_ip = 100000
# A client that stops reading is closed with 1013 sooner.
send_queue = 256

[admin]
listen = "127.0.0.1:$admin_port"
api_key = "$api_key"

[log]
level = "warn"
format = "json"
EOF

"$gateway" serve --config "$tmp/wsgate.toml" 2>"$out/gateway.log" &
gw_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$gw_pid" 2>/dev/null || { echo "soak: the gateway exited:" >&2; cat "$out/gateway.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null

echo "soak: gateway pid $gw_pid on :$port, churn for $minutes min, lines in $jsonl" >&2
status=0
WSGATE_BENCH_SECRET=$secret "$bench" --churn \
  --url "wss://localhost:$port/ws" --ca "$tmp/certs/ca.crt" --origin "" \
  --metrics-url "http://127.0.0.1:$admin_port/metrics" --server-pid "$gw_pid" \
  --duration "${minutes}m" --json "$jsonl" "$@" >/dev/null || status=$?

tail -n 1 "$jsonl" >"$out/summary.json"
echo "soak: summary in $out/summary.json (exit $status)" >&2

python=${PYTHON:-python3}
if "$python" -c 'import matplotlib' 2>/dev/null; then
  "$python" tools/soak/plot.py "$jsonl" "$out/soak.png"
else
  echo "soak: no matplotlib for $python: plot later with tools/soak/plot.py $jsonl OUT.png" >&2
fi
exit "$status"
