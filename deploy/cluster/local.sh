#!/usr/bin/env bash
# Three wsgate nodes and HAProxy on one machine, in the foreground, for trying cluster mode:
#
#   cargo build --release && deploy/cluster/local.sh
#
# HAProxy listens on https://localhost:8443/ (the demo page, as with one node) and spreads
# connections over the nodes on 127.0.0.1:8444-8446 with a PROXY v2 header; each node's admin
# listener is on 127.0.0.1:9091-9093. Rooms are shared over Redis (REDIS_URL, default
# redis://127.0.0.1:6379/0; Debian: apt-get install redis-server haproxy). Every node runs on
# config/wsgate.toml with environment overrides. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."

WSGATE=${WSGATE:-target/release/wsgate}
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
[ -x "$WSGATE" ] || { echo "local.sh: $WSGATE is missing: cargo build --release" >&2; exit 1; }
[ -x "$HAPROXY" ] || { echo "local.sh: haproxy is missing: apt-get install haproxy" >&2; exit 1; }

run=$(mktemp -d)
pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap stop INT TERM EXIT

node() {
  local i=$1
  WSGATE__SERVER__LISTEN=127.0.0.1:844$((i + 3)) \
  WSGATE__ADMIN__LISTEN=127.0.0.1:909$i \
  WSGATE__SERVER__PROXY_PROTOCOL=true \
  WSGATE__SERVER__TRUSTED_PROXIES=127.0.0.1/32 \
  WSGATE__CLUSTER__REDIS_URL="$REDIS_URL" \
  WSGATE__CLUSTER__NODE_NAME=gw$i \
    "$WSGATE" --config config/wsgate.toml >"$run/gw$i.log" 2>&1 &
  pids+=($!)
}

ready() {
  # Waits until node $1 answers /readyz (or gives up after 30 s).
  for _ in $(seq 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:909$1/readyz" 2>/dev/null; then return 0; fi
    if ! kill -0 "${pids[$(($1 - 1))]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "local.sh: gw$1 did not become ready; its log:" >&2
  cat "$run/gw$1.log" >&2
  exit 1
}

# The first node makes the development certificate (certs/dev/) if there is none yet; the
# others start once it is ready and use the same files.
node 1
ready 1
node 2
node 3
ready 2
ready 3

cat >"$run/haproxy.cfg" <<CFG
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 2m
    retries 2
    option redispatch 1
frontend wss
    bind 127.0.0.1:8443
    default_backend wsgate
backend wsgate
    balance roundrobin
    option httpchk GET /readyz HTTP/1.1
    http-check send hdr Host localhost
    http-check expect status 200
    default-server send-proxy-v2 check inter 2s fall 2 rise 2
    server gw1 127.0.0.1:8444 port 9091
    server gw2 127.0.0.1:8445 port 9092
    server gw3 127.0.0.1:8446 port 9093
CFG
"$HAPROXY" -W -db -f "$run/haproxy.cfg" >"$run/haproxy.log" 2>&1 &
pids+=($!)

cat <<MSG
wsgate cluster: https://localhost:8443/ (HAProxy) -> gw1..gw3 on 127.0.0.1:8444-8446, Redis $REDIS_URL
  nodes:   curl -s -H 'Authorization: Bearer change-me-too' http://127.0.0.1:9091/api/nodes
  a token: $WSGATE token --sub alice
  logs:    $run/
Ctrl-C stops the nodes and HAProxy.
MSG
wait -n "${pids[@]}"
echo "local.sh: a process exited; stopping the rest" >&2
