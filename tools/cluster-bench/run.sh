#!/usr/bin/env bash
# Cluster mode against a single node, in one session, on loopback (BENCHMARKS.md, "Cluster"):
#
#   cargo build --release --workspace && tools/cluster-bench/run.sh [OUT_DIR]
#
# Starts a private redis-server on a free port (never the shared one on 6379) and gateways on
# free ports with generous limits, runs target/release/wsgate-bench against them and writes one
# JSON report per scenario into OUT_DIR (default: a temp dir), plus redis.json (Redis memory per
# room of history, Redis commands per publish). The gateway and Redis run on CPU 0, the load
# generator on CPU 1. Scenarios:
#   fanout-1000   1000 subscribers, 20 msg/s (20,000 deliveries/s): latency, CPU per delivery
#   fanout-1000-max  1000 subscribers, closed loop: deliveries/s and CPU per delivery
#   hop           10 subscribers, 1,000 publishes/s: publish→delivery latency (the Redis hop)
#   room-max      10 subscribers, closed loop: the publishes/s one room takes from one publisher
#   room-max-8    the same from 8 publishers
#   two-nodes     1000 subscribers over two nodes, closed loop (cluster only)
#   two-nodes-20  1000 subscribers over two nodes, 20 msg/s
# ONLY=single-fanout-1000,cluster-fanout-1000 runs only those (names: MODE-SCENARIO, two-nodes,
# two-nodes-20, redis).
set -euo pipefail
cd "$(dirname "$0")/../.."

WSGATE=${WSGATE:-target/release/wsgate}
BENCH=${BENCH:-target/release/wsgate-bench}
DURATION=${DURATION:-10s}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
for b in "$WSGATE" "$BENCH"; do
  [ -x "$b" ] || { echo "cluster-bench: $b missing: cargo build --release --workspace" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "cluster-bench: apt-get install redis-server redis-tools" >&2; exit 1; }

run=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
SECRET=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
SECRET="bench-${SECRET}-bench-secret"

REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$run" >"$run/redis.log" 2>&1 &
pids+=($!)
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# start_node NAME REDIS_URL: starts a gateway, sets NODE_PID, NODE_URL and NODE_ADMIN.
start_node() {
  local name=$1 redis_url=$2 port admin
  port=$(free_port)
  admin=$(free_port)
  cat >"$run/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
ws_path = "/ws"
static_dir = ""
max_connections = 200000
shutdown_grace = "2s"

[tls]
cert = "$run/certs/server.crt"
key = "$run/certs/server.key"
generate_dev_cert = true

[origin]
allowed = ["https://localhost:8443"]
allow_missing = true

[auth]
algorithms = ["HS256"]
hs_secret = "$SECRET"

[limits]
messages_per_second = 10000000
burst = 10000000
handshakes_per_ip_per_minute = 100000000
max_connections_per_ip = 200000
max_connections_per_user = 200000
handshakes_in_flight_per_ip = 100000
max_message_bytes = 65536
send_queue = 4096
commands_per_second = 10000000
command_burst = 10000000

[admin]
listen = "127.0.0.1:$admin"
api_key = "bench-admin-key-bench-admin-key-0123"

[cluster]
redis_url = "$redis_url"
node_name = "$name"

[log]
level = "warn"
TOML
  taskset -c 0 "$WSGATE" serve --config "$run/$name.toml" >"$run/$name.log" 2>&1 &
  NODE_PID=$!
  pids+=($NODE_PID)
  for _ in $(seq 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" || { cat "$run/$name.log" >&2; exit 1; }
  NODE_URL="wss://localhost:$port/ws"
  NODE_ADMIN=$admin
}

stop_node() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# bench NAME URL REDIS(0/1) ARGS...: one wsgate-bench run, with Redis's CPU and command count.
bench() {
  local name=$1 url=$2 with_redis=$3
  shift 3
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then return 0; fi
  local t0 c0
  t0=$(cpu_ticks "$REDIS_PID")
  c0=$(rcli info stats | awk -F: '/^total_commands_processed/ {print $2+0}')
  taskset -c 1 "$BENCH" --url "$url" --secret "$SECRET" --ca "$run/certs/ca.crt" --origin "" \
    --duration "$DURATION" --json "$OUT/$name.json" "$@" 2>"$OUT/$name.log" || true
  local t1 c1
  t1=$(cpu_ticks "$REDIS_PID")
  c1=$(rcli info stats | awk -F: '/^total_commands_processed/ {print $2+0}')
  if [ "$with_redis" = 1 ]; then
    python3 - "$OUT/$name.json" "$t0" "$t1" "$c0" "$c1" <<'PY'
import json, os, sys
path, t0, t1, c0, c1 = sys.argv[1], *map(int, sys.argv[2:])
r = json.load(open(path))
hz = os.sysconf("SC_CLK_TCK")
r["redis_cpu_seconds"] = (t1 - t0) / hz
r["redis_commands"] = c1 - c0
json.dump(r, open(path, "w"), indent=1)
PY
  fi
  tail -1 "$OUT/$name.log"
}

scenarios() {
  local mode=$1 url=$2 with_redis=$3
  bench "$mode-fanout-1000" "$url" "$with_redis" --conns 1000 --rate 20 --server-pid "$NODE_PID"
  bench "$mode-fanout-1000-max" "$url" "$with_redis" --conns 1000 --rate max --window 64 --server-pid "$NODE_PID"
  bench "$mode-hop" "$url" "$with_redis" --conns 10 --rate 1000 --server-pid "$NODE_PID"
  bench "$mode-room-max" "$url" "$with_redis" --conns 10 --rate max --window 64 --server-pid "$NODE_PID"
  bench "$mode-room-max-8" "$url" "$with_redis" --conns 10 --publishers 8 --rate max --window 256 --server-pid "$NODE_PID"
}

echo "== single node"
start_node single ""
scenarios single "$NODE_URL" 0
stop_node "$NODE_PID"

echo "== cluster, one node + Redis"
start_node c1 "redis://127.0.0.1:$REDIS_PORT"
scenarios cluster "$NODE_URL" 1
A_URL=$NODE_URL
A_PID=$NODE_PID

echo "== cluster, two nodes"
start_node c2 "redis://127.0.0.1:$REDIS_PORT"
bench two-nodes-20 "$A_URL,$NODE_URL" 1 --conns 1000 --rate 20 --server-pid "$A_PID"
bench two-nodes "$A_URL,$NODE_URL" 1 --conns 1000 --rate max --window 64 --server-pid "$A_PID"
python3 - "$OUT/two-nodes.json" "$NODE_PID" <<'PY'
import json, sys
path, pid = sys.argv[1], sys.argv[2]
r = json.load(open(path))
r["note"] = "server_cpu_seconds is node c1 only; subscribers alternate between c1 and c2 (c2's pid " + pid + ")"
json.dump(r, open(path, "w"), indent=1)
PY
stop_node "$NODE_PID"
stop_node "$A_PID"

if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",redis,"* ]]; then echo "reports in $OUT"; exit 0; fi
echo "== Redis memory per room of history"
before=$(rcli info memory | awk -F: '/^used_memory:/ {print $2+0}')
start_node fill "redis://127.0.0.1:$REDIS_PORT"
c0=$(rcli info stats | awk -F: '/^total_commands_processed/ {print $2+0}')
ROOMS=${ROOMS:-200}
PER_ROOM=${PER_ROOM:-100}
python3 - "$NODE_ADMIN" "$ROOMS" "$PER_ROOM" <<'PY'
import http.client, json, sys
port, rooms, per = map(int, sys.argv[1:])
c = http.client.HTTPConnection("127.0.0.1", port)
pad = "x" * 60
for r in range(rooms):
    for i in range(per):
        body = json.dumps({"room": f"fill-{r}", "data": {"n": i, "pad": pad}})
        c.request("POST", "/api/publish", body, {"Authorization": "Bearer bench-admin-key-bench-admin-key-0123", "Content-Type": "application/json"})
        resp = c.getresponse(); resp.read()
        assert resp.status == 200, resp.status
PY
c1=$(rcli info stats | awk -F: '/^total_commands_processed/ {print $2+0}')
after=$(rcli info memory | awk -F: '/^used_memory:/ {print $2+0}')
python3 - "$OUT/redis.json" "$before" "$after" "$ROOMS" "$PER_ROOM" "$c0" "$c1" <<'PY'
import json, sys
path = sys.argv[1]
before, after, rooms, per, c0, c1 = map(int, sys.argv[2:])
r = {"rooms": rooms, "messages_per_room": per, "used_memory_before": before,
     "used_memory_after": after, "bytes_per_room": (after - before) / rooms,
     "bytes_per_message": (after - before) / (rooms * per),
     "commands_per_admin_publish": (c1 - c0) / (rooms * per)}
json.dump(r, open(path, "w"), indent=1)
print(json.dumps(r))
PY
echo "reports in $OUT"
