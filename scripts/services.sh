#!/usr/bin/env bash
# Real Kafka + Redis for the integration suite (see scripts/kafka.sh and scripts/redis.sh).
#
#   scripts/services.sh up            start both; write .cache/services.env (KEY=VALUE lines)
#   scripts/services.sh down          stop both
#   scripts/services.sh status        exit 0 when both are running
#   scripts/services.sh run CMD...    up, run CMD with PUSHREC_TEST_KAFKA_BOOTSTRAP and
#                                     PUSHREC_TEST_REDIS_URL exported, then down (always);
#                                     exits with CMD's status. Nested runs reuse the outer services.
#
# With SERVICES_CLUSTER=1, a local Redis Cluster too (scripts/redis-cluster.sh: 3 masters + 3
# replicas), exported as PUSHREC_TEST_REDIS_CLUSTER_URL (tests/integration/test_cluster.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$ROOT/scripts"
ENV_FILE="$ROOT/.cache/services.env"

log() { echo "services.sh: $*" >&2; }

down() {
  local rc=0
  "$SCRIPTS/kafka.sh" stop || rc=1
  "$SCRIPTS/redis.sh" stop || rc=1
  if [ "${SERVICES_CLUSTER:-}" = 1 ]; then "$SCRIPTS/redis-cluster.sh" stop || rc=1; fi
  rm -f "$ENV_FILE"
  return "$rc"
}

up() {
  local kafka_out redis_out bootstrap redis_url cluster_out cluster_url=""
  mkdir -p "$(dirname "$ENV_FILE")"
  rm -f "$ENV_FILE"
  if ! redis_out="$("$SCRIPTS/redis.sh" start)"; then
    log "redis failed to start"; down >/dev/null 2>&1 || true; return 1
  fi
  if ! kafka_out="$("$SCRIPTS/kafka.sh" start)"; then
    log "kafka failed to start"; down >/dev/null 2>&1 || true; return 1
  fi
  if [ "${SERVICES_CLUSTER:-}" = 1 ]; then
    if ! cluster_out="$("$SCRIPTS/redis-cluster.sh" start)"; then
      log "redis cluster failed to start"; down >/dev/null 2>&1 || true; return 1
    fi
    cluster_url="$(sed -n 's/^REDIS_CLUSTER_URL=//p' <<<"$cluster_out")"
  fi
  bootstrap="$(sed -n 's/^KAFKA_BOOTSTRAP=//p' <<<"$kafka_out")"
  redis_url="$(sed -n 's/^REDIS_URL=//p' <<<"$redis_out")"
  if [ -z "$bootstrap" ] || [ -z "$redis_url" ]; then
    log "could not read the service addresses"; down >/dev/null 2>&1 || true; return 1
  fi
  {
    printf 'PUSHREC_TEST_KAFKA_BOOTSTRAP=%s\nPUSHREC_TEST_REDIS_URL=%s\n' "$bootstrap" "$redis_url"
    # What a test needs to restart this very broker (scripts/kafka.sh with KAFKA_KEEP_DATA=1).
    printf 'PUSHREC_TEST_KAFKA_DIR=%s\n' "${KAFKA_DIR:-$ROOT/.cache/kafka}"
    printf 'PUSHREC_TEST_KAFKA_PORT=%s\n' "${KAFKA_PORT:-19092}"
    printf 'PUSHREC_TEST_KAFKA_CONTROLLER_PORT=%s\n' "${KAFKA_CONTROLLER_PORT:-19093}"
    if [ -n "$cluster_url" ]; then
      printf 'PUSHREC_TEST_REDIS_CLUSTER_URL=%s\n' "$cluster_url"
      # What a test needs to restart a node it killed (scripts/redis-cluster.sh start).
      printf 'PUSHREC_TEST_REDIS_CLUSTER_DIR=%s\n' "${REDIS_CLUSTER_DIR:-$ROOT/.cache/redis-cluster}"
    fi
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  cat "$ENV_FILE"
}

status() {
  "$SCRIPTS/kafka.sh" status && "$SCRIPTS/redis.sh" status || return 1
  if [ "${SERVICES_CLUSTER:-}" = 1 ]; then "$SCRIPTS/redis-cluster.sh" status; fi
}

run() {
  [ "$#" -gt 0 ] || { echo "usage: $0 run CMD [ARGS...]" >&2; exit 2; }
  if [ "${PUSHREC_SERVICES_UP:-}" = 1 ] && [ -n "${PUSHREC_TEST_KAFKA_BOOTSTRAP:-}" ]; then
    exec "$@"   # an outer `run` owns the services
  fi
  trap 'down >/dev/null 2>&1 || true' EXIT
  up >/dev/null
  set -a
  # shellcheck source=/dev/null
  . "$ENV_FILE"
  set +a
  export PUSHREC_SERVICES_UP=1
  log "kafka $PUSHREC_TEST_KAFKA_BOOTSTRAP, redis $PUSHREC_TEST_REDIS_URL"
  # Run CMD as a child we wait for, so a TERM/INT to us is forwarded at once (bash would otherwise
  # defer the trap until CMD ends) and the services are still stopped by the EXIT trap.
  local child rc=0
  "$@" <&0 &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; exit 143' TERM
  trap 'kill -INT "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; exit 130' INT
  wait "$child" || rc=$?
  return "$rc"
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  run) run "$@" ;;
  *) echo "usage: $0 up|down|status|run CMD..." >&2; exit 2 ;;
esac
