# shellcheck shell=bash
# Shared by scripts/kafka.sh, scripts/redis.sh and scripts/redis-cluster.sh (sourced): stop the
# process in $PIDFILE; install Debian packages without starting their services.
# Needs: PIDFILE, and the caller's log(), die() and pid_alive() (which checks the pid is ours).

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

# apt_install_no_service PKG...: apt-get install PKGs (root) while a policy-rc.d keeps their own
# services from starting: we run our own processes, never the package's service.
apt_install_no_service() {
  local policy=/usr/sbin/policy-rc.d created=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "$@" >/dev/null; } || rc=$?
  [ "$created" = 1 ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install $* failed"
}
