# shellcheck shell=bash
# Shared by scripts/kafka.sh and scripts/redis.sh (sourced): stop the process in $PIDFILE.
# Needs: PIDFILE, and the caller's log() and pid_alive() (which checks the pid is really ours).

# stop_pidfile SECONDS: TERM, wait up to SECONDS, then KILL; forget the pid file.
stop_pidfile() {
  local grace="$1" pid i
  if ! pid_alive; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after ${grace}s; killing"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PIDFILE"
  log "stopped"
}
