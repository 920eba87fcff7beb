#!/usr/bin/env bash
# A real Redis Cluster of our own (3 masters + 3 replicas on 127.0.0.1) for integration tests and CI.
#
#   scripts/redis-cluster.sh start    find or install redis-server, start 6 nodes, create the cluster
#                                     (or rejoin the existing one), wait for cluster_state:ok on every
#                                     node; prints REDIS_CLUSTER_URL=redis://127.0.0.1:<first port>/0
#   scripts/redis-cluster.sh stop     stop every node (TERM, then KILL by pid) and forget the cluster
#   scripts/redis-cluster.sh status   exit 0 when all 6 nodes run and the cluster state is ok
#
# Env: REDIS_CLUSTER_PORT (17000: nodes on PORT..PORT+5), REDIS_CLUSTER_DIR (<repo>/.cache/redis-cluster),
# REDIS_SERVER (a redis-server binary; default: the one on PATH, else Debian's redis-server package
# installed with apt-get when root), REDIS_CLUSTER_NODE_TIMEOUT (2000 ms: a dead master's replica
# takes over within a few seconds, which the failover tests rely on), REDIS_START_TIMEOUT (30 s).
# No persistence (--save '' --appendonly no); each node keeps only the nodes.conf cluster mode needs,
# and `stop` removes it, so every `start` after a `stop` creates a fresh, empty cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_PORT="${REDIS_CLUSTER_PORT:-17000}"
CLUSTER_DIR="${REDIS_CLUSTER_DIR:-$ROOT/.cache/redis-cluster}"
NODE_TIMEOUT="${REDIS_CLUSTER_NODE_TIMEOUT:-2000}"
START_TIMEOUT="${REDIS_START_TIMEOUT:-30}"
NODES=6

log() { echo "redis-cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=scripts/_proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/_proc.sh"

ports() { seq "$BASE_PORT" $((BASE_PORT + NODES - 1)); }

find_server() {
  if [ -n "${REDIS_SERVER:-}" ]; then
    [ -x "$REDIS_SERVER" ] || die "REDIS_SERVER=$REDIS_SERVER is not executable"
    echo "$REDIS_SERVER"; return 0
  fi
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    command -v redis-server; return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "redis-server/redis-cli not found; installing Debian's redis-server package"
    apt_install_no_service redis-server redis-tools
    command -v redis-server >/dev/null || die "redis-server still not on PATH after apt-get install"
    command -v redis-server; return 0
  fi
  die "redis-server/redis-cli not found: install them (sudo apt-get install redis-server), or run as root so this script can apt-get them"
}

# _proc.sh's helpers work on one PIDFILE; node() points them at one node.
node() {
  PORT="$1"
  NODE_DIR="$CLUSTER_DIR/$PORT"
  PIDFILE="$NODE_DIR/redis.pid"
}

pid_alive() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "redis-server 127.0.0.1:$PORT"
}

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

state_ok() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'; }

linked() { cli "$1" info replication 2>/dev/null | tr -d '\r' | grep -qx 'master_link_status:up'; }

# Every node sees cluster_state:ok and 3 replicas are linked to (and synced with) their masters:
# a master killed before its replica synced would leave its slots uncovered.
all_ok() {
  local p replicas=0
  for p in $(ports); do
    state_ok "$p" || return 1
    if linked "$p"; then replicas=$((replicas + 1)); fi
  done
  [ "$replicas" = $((NODES / 2)) ]
}

status() {
  local p down=0
  for p in $(ports); do
    node "$p"
    pid_alive || { echo "node $p not running"; down=1; }
  done
  [ "$down" = 0 ] || return 1
  if all_ok; then
    echo "redis cluster running (127.0.0.1:$BASE_PORT-$((BASE_PORT + NODES - 1)), cluster_state:ok)"
  else
    echo "redis cluster nodes running, cluster_state not ok"
    return 1
  fi
}

start_node() {
  local server="$1" p="$2"
  node "$p"
  if pid_alive; then return 0; fi
  port_busy "$p" && die "port $p is already in use (a stale server? set REDIS_CLUSTER_PORT)"
  mkdir -p "$NODE_DIR"
  # A replication sync may leave a dump.rdb behind even with --save '': loaded at start, its keys
  # would make a fresh node "not empty" for --cluster create (a rejoining node resyncs anyway).
  rm -f "$PIDFILE" "$NODE_DIR/dump.rdb"
  : >"$NODE_DIR/redis.log"
  "$server" --bind 127.0.0.1 --port "$p" --protected-mode yes \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$NODE_TIMEOUT" \
    --save '' --appendonly no --dir "$NODE_DIR" \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$NODE_DIR/redis.log" \
    || { tail -n 50 "$NODE_DIR/redis.log" >&2 || true; die "redis-server failed to start on port $p"; }
}

wait_for() {  # wait_for WHAT CMD...: retry CMD until it succeeds or START_TIMEOUT passes
  local what="$1" deadline=$((SECONDS + START_TIMEOUT))
  shift
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out waiting for $what after ${START_TIMEOUT}s"
      return 1
    fi
    sleep 0.2
  done
}

pings() {
  local p
  for p in $(ports); do [ "$(cli "$p" ping 2>/dev/null)" = PONG ] || return 1; done
}

start() {
  local server p
  server="$(find_server)"
  for p in $(ports); do start_node "$server" "$p"; done
  wait_for "every node to answer PING" pings || { stop >/dev/null 2>&1 || true; exit 1; }
  # A fresh node knows only itself; nodes restarted from their nodes.conf rejoin on their own.
  if [ "$(cli "$BASE_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
    local addrs=()
    for p in $(ports); do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 \
      || { cat "$CLUSTER_DIR/create.log" >&2; stop >/dev/null 2>&1 || true; die "redis-cli --cluster create failed"; }
  fi
  wait_for "cluster_state:ok on every node and linked replicas" all_ok || {
    for p in $(ports); do log "node $p: $(cli "$p" cluster info 2>&1 | tr -d '\r' | grep cluster_state)"; done
    stop >/dev/null 2>&1 || true
    exit 1
  }
  log "started $("$server" --version | cut -d' ' -f3): 3 masters + 3 replicas on 127.0.0.1:$BASE_PORT-$((BASE_PORT + NODES - 1))"
  echo "REDIS_CLUSTER_URL=redis://127.0.0.1:$BASE_PORT/0"
}

stop() {
  local p
  for p in $(ports); do
    node "$p"
    stop_pidfile 10 2>&1 | sed "s/^/node $p: /" >&2
    # The cluster's membership lives in nodes.conf: without it the next start is a fresh cluster.
    rm -f "$NODE_DIR/nodes.conf" "$NODE_DIR/dump.rdb"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
