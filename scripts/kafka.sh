#!/usr/bin/env bash
# A real single-node Kafka broker (KRaft, combined broker+controller) for integration tests and CI.
#
#   scripts/kafka.sh install   fetch Kafka + runtime deps from Maven Central into $KAFKA_DIR/lib (once)
#   scripts/kafka.sh start     install if needed, format fresh storage, start, wait for readiness
#   scripts/kafka.sh stop      stop the broker (TERM, then KILL after 20 s)
#   scripts/kafka.sh status    exit 0 when the broker is running
#
# Env: KAFKA_VERSION (3.9.1), KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (19093),
#      KAFKA_DIR (<repo>/.cache/kafka), KAFKA_HEAP_OPTS (-Xmx512m -Xms256m),
#      KAFKA_START_TIMEOUT (90 seconds).
# Everything (jars, the Maven cache, data, logs) lives under $KAFKA_DIR, which is git-ignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-3.9.1}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_DIR="${KAFKA_DIR:-$ROOT/.cache/kafka}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
SLF4J_VERSION=1.7.36

LIB="$KAFKA_DIR/lib"
DATA="$KAFKA_DIR/data"
PIDFILE="$KAFKA_DIR/kafka.pid"
LOG="$KAFKA_DIR/server.log"
OUT="$KAFKA_DIR/stdout.log"
PROPS="$KAFKA_DIR/server.properties"
LOG4J="$KAFKA_DIR/log4j.properties"
KAFKA_JAR="$LIB/kafka_2.13-$KAFKA_VERSION.jar"

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=scripts/_proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/_proc.sh"

need_java() {
  command -v java >/dev/null || die "java not found (Java 17+ required; apt-get install openjdk-17-jre-headless)"
}

install() {
  if [ -f "$KAFKA_JAR" ]; then
    return 0
  fi
  need_java
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  mkdir -p "$KAFKA_DIR"
  local build="$KAFKA_DIR/build"
  rm -rf "$build" "$LIB.tmp"
  mkdir -p "$build"
  # A throwaway pom whose runtime dependencies are exactly the broker's classpath. One slf4j
  # binding only: reload4j (Kafka 3.9 logs through slf4j 1.7 + log4j 1.x config).
  cat >"$build/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.pushrec</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>ch.qos.logback</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.slf4j</groupId><artifactId>slf4j-log4j12</artifactId></exclusion>
        <exclusion><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId></exclusion>
        <exclusion><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId></exclusion>
        <exclusion><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
  log "installing Kafka $KAFKA_VERSION from Maven Central into $LIB (first time only)"
  local attempt
  for attempt in 1 2 3; do
    if (
      cd "$build"
      mvn -q -B -U -ntp -Dstyle.color=never -Dmaven.repo.local="$KAFKA_DIR/m2" \
        -Dmaven.wagon.http.retryHandler.count=3 \
        org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
        -DoutputDirectory="$LIB.tmp" -DincludeScope=runtime >"$KAFKA_DIR/mvn.log" 2>&1
    ); then
      break
    fi
    sed 's/\x1b\[[0-9;]*m//g' "$KAFKA_DIR/mvn.log" | tail -n 40 >&2
    if [ "$attempt" = 3 ]; then
      die "mvn dependency:copy-dependencies failed 3 times (log: $KAFKA_DIR/mvn.log)"
    fi
    log "mvn failed (attempt $attempt); retrying"
    rm -rf "$LIB.tmp"
    sleep $((attempt * 5))
  done
  [ -f "$LIB.tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka jar missing after mvn"
  local bindings
  bindings="$(find "$LIB.tmp" -maxdepth 1 \( -name 'slf4j-*.jar' -o -name 'logback-classic-*.jar' \
    -o -name 'log4j-slf4j*.jar' \) ! -name 'slf4j-api-*' -printf '%f\n' | sort)"
  [ "$(grep -c . <<<"$bindings")" = 1 ] || die "expected exactly one slf4j binding, got: $bindings"
  rm -rf "$LIB"
  mv "$LIB.tmp" "$LIB"
  rm -rf "$build"
  log "installed $(find "$LIB" -name '*.jar' | wc -l) jars"
}

# Running = the pid file names a live process that is our broker (guards against pid reuse).
pid_alive() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # /proc, not ps: a bare container may lack procps.
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "kafka.Kafka $PROPS"
}

status() {
  if pid_alive; then
    echo "kafka running (pid $(cat "$PIDFILE"), 127.0.0.1:$KAFKA_PORT)"
  else
    echo "kafka not running"
    return 1
  fi
}

write_config() {
  cat >"$PROPS" <<PROPS
# Written by scripts/kafka.sh: single-node KRaft broker+controller for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
log.retention.hours=1
log.segment.bytes=16777216
PROPS
  cat >"$LOG4J" <<L4J
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$LOG
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
L4J
}

port_busy() {
  # true when something already listens on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if pid_alive; then
    log "already running (pid $(cat "$PIDFILE"))"
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  rm -f "$PIDFILE"
  install
  need_java
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_busy "$p"; then
      die "port $p is already in use (a stale broker? set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
  done
  mkdir -p "$KAFKA_DIR"
  : >"$LOG"
  write_config
  local java_opts=(-Dlog4j.configuration="file:$LOG4J" -Djava.awt.headless=true)
  # KAFKA_KEEP_DATA=1 restarts on the existing log (topics, offsets): a broker restart, as in
  # production. Otherwise every start is a fresh, formatted broker.
  if [ "${KAFKA_KEEP_DATA:-}" = 1 ] && [ -f "$DATA/meta.properties" ]; then
    : >"$OUT"
  else
    rm -rf "$DATA"
    local uuid
    uuid="$(java "${java_opts[@]}" -cp "$LIB/*" kafka.tools.StorageTool random-uuid)"
    java "${java_opts[@]}" -cp "$LIB/*" kafka.tools.StorageTool format -t "$uuid" -c "$PROPS" \
      >"$OUT" 2>&1 || { cat "$OUT" >&2; die "storage format failed"; }
  fi
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of JVM flags
  nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 "${java_opts[@]}" \
    -cp "$LIB/*" kafka.Kafka "$PROPS" >>"$OUT" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    if grep -q "Kafka Server started" "$LOG" 2>/dev/null; then
      break
    fi
    if ! pid_alive; then
      log "broker exited during startup; last log lines:"
      tail -n 50 "$LOG" "$OUT" >&2 || true
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "not ready after ${KAFKA_START_TIMEOUT}s; last log lines:"
      tail -n 50 "$LOG" "$OUT" >&2 || true
      stop >/dev/null 2>&1 || true
      exit 1
    fi
    sleep 0.2
  done
  log "started (pid $(cat "$PIDFILE"))"
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
}

stop() {
  stop_pidfile 20
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
