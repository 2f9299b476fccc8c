#!/usr/bin/env bash
# Apache Kafka (KRaft) for local runs and tests, from Maven Central jars: one plaintext node, or with
# KAFKA_CLUSTER=3 a cluster of three secured nodes (cluster.sh beside this file, docs/operations.md).
#   kafka.sh fetch | start | stop | status
#   KAFKA_CLUSTER=3 kafka.sh start [NODE] | stop [NODE] | status | bootstrap | client-env PRINCIPAL
# Topics are provisioned by `python -m enlace_platform.topics` (see Makefile).
# Environment (all optional; the cluster's own are in cluster.sh):
#   KAFKA_CLUSTER     number of nodes               (default: 1)
#   KAFKA_STATE_DIR   data, config, pid and log     (default: <repo>/.run/kafka)
#   KAFKA_PORT        client listener on 127.0.0.1  (default: 9092)
#   KAFKA_CONTROLLER_PORT                           (default: KAFKA_PORT+1)
#   KAFKA_HEAP        JVM heap                      (default: 512m)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="${KAFKA_LIBS_DIR:-$repo/.cache/kafka-$kafka_version/libs}"
state="${KAFKA_STATE_DIR:-$repo/.run/kafka}"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
heap="${KAFKA_HEAP:-512m}"
pidfile="$state/kafka.pid"
cluster_id="ZW5sYWNlLWxvY2FsLWthZg"   # fixed base64 16-byte id, so formatting is reproducible

log() { printf 'kafka: %s\n' "$*" >&2; }

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn is required to fetch Kafka jars"; exit 1; }
  log "fetching Apache Kafka $kafka_version jars from Maven Central into $libs"
  rm -rf "$libs" && mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$libs/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

java_cmd() {
  java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.xml" -Dkafka.logs.dir="$state/logs" \
       -cp "$libs/*" "$@"
}

write_config() {
  mkdir -p "$state/data" "$state/logs"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
}

wait_ready() {
  # Readiness is a metadata round trip (ApiVersions + Metadata), not a sleep.
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  while [ $SECONDS -lt $deadline ]; do
    if ! running; then log "broker exited; see $state/logs/server.log"; tail -20 "$state/logs/server.log" >&2 || true; return 1; fi
    if python_metadata; then
      return 0
    fi
    sleep 0.5
  done
  log "broker not ready after ${KAFKA_START_TIMEOUT:-90}s"; return 1
}

python_metadata() {
  "${PYTHON:-python3}" - "$port" <<'PY' 2>/dev/null
import socket, struct, sys
# Minimal MetadataRequest v0 with an empty topic list: a reply means the broker serves clients.
port = int(sys.argv[1])
body = struct.pack(">hhih", 3, 0, 1, 6) + b"enlace" + struct.pack(">i", 0)
with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4))[0]
    sys.exit(0 if size > 0 else 1)
PY
}

start() {
  fetch
  if running; then log "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; fi
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" -g >"$state/logs/format.log" 2>&1 \
      || { log "storage format failed"; cat "$state/logs/format.log" >&2; exit 1; }
  fi
  log "starting broker on 127.0.0.1:$port (state in $state)"
  setsid nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.xml" -Dkafka.logs.dir="$state/logs" \
       -cp "$libs/*" kafka.Kafka "$state/server.properties" >"$state/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  wait_ready
  log "ready"
}

stop() {
  if ! running; then rm -f "$pidfile"; log "not running"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "forcing stop"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "stopped"
}

if [ "${KAFKA_CLUSTER:-1}" != 1 ]; then
  # shellcheck source=cluster.sh
  source "$here/cluster.sh"
  cluster_main "$@"
  exit $?
fi

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running pid $(cat "$pidfile") port $port"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
