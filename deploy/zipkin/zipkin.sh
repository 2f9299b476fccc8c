#!/usr/bin/env bash
# Zipkin, the trace UI of local runs: the server's exec jar from Maven Central, in-memory storage,
# listening on 127.0.0.1 only. The services send spans to it with OTEL_TRACES_EXPORTER=zipkin.
#   zipkin.sh fetch | start | stop | status
# Environment (all optional):
#   ZIPKIN_STATE_DIR   pid and log          (default: <repo>/.run/zipkin)
#   ZIPKIN_PORT        UI and API port      (default: 9411)
#   ZIPKIN_HEAP        JVM heap             (default: 1536m)
#   MEM_MAX_SPANS      spans kept in memory (default: 250000); beyond it the oldest traces go
#
# Sized for a 10,000-case run at the budget of ~20 spans a case (16 measured, SQL spans off; see
# docs/operations.md): 200,000 spans, kept whole with a quarter to spare (250,000). Measured on Zipkin
# 3.5.1 with spans shaped like ours, the in-memory store holds ~3.2 KB a span: ~800 MB live at the cap,
# about half of a 1536m heap, so the collector keeps up (at 1g the old generation sat at 95%). The old
# 256m filled after ~750-1,000 cases (~160 spans a case, SQL spans on) and the JVM then spent half a
# core in garbage collection.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="3.5.1"
sha256="7ac633a6832647e71e50012a5e3e91fbc7054414955261724526030faf271d8d"
jar="${ZIPKIN_JAR:-$repo/.cache/zipkin/zipkin-server-$version-exec.jar}"
state="${ZIPKIN_STATE_DIR:-$repo/.run/zipkin}"
port="${ZIPKIN_PORT:-9411}"
heap="${ZIPKIN_HEAP:-1536m}"
max_spans="${MEM_MAX_SPANS:-250000}"
pidfile="$state/zipkin.pid"

log() { printf 'zipkin: %s\n' "$*" >&2; }

fetch() {
  if [ -f "$jar" ]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn is required to fetch Zipkin"; exit 1; }
  log "fetching zipkin-server $version (exec jar) from Maven Central"
  mkdir -p "$(dirname "$jar")"
  mvn -q -B dependency:copy -Dartifact="io.zipkin:zipkin-server:$version:jar:exec" \
      -DoutputDirectory="$(dirname "$jar")" -Dmdep.overWriteReleases=true >&2
  echo "$sha256  $jar" | sha256sum -c --quiet - || { log "checksum mismatch for $jar"; rm -f "$jar"; exit 1; }
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

healthy() {
  "${PYTHON:-python3}" - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

start() {
  fetch
  if running; then log "already running (pid $(cat "$pidfile")) at http://127.0.0.1:$port/zipkin/"; return 0; fi
  mkdir -p "$state"
  log "starting on 127.0.0.1:$port"
  MEM_MAX_SPANS="$max_spans" setsid nohup java -Xms"$heap" -Xmx"$heap" -jar "$jar" \
      "--armeria.ports[0].port=$port" "--armeria.ports[0].ip=127.0.0.1" "--armeria.ports[0].protocols=http" \
      >"$state/zipkin.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + ${ZIPKIN_START_TIMEOUT:-90}))
  until healthy; do
    if ! running; then log "exited; see $state/zipkin.log"; tail -20 "$state/zipkin.log" >&2 || true; return 1; fi
    if [ $SECONDS -ge $deadline ]; then log "not healthy after ${ZIPKIN_START_TIMEOUT:-90}s"; return 1; fi
    sleep 0.5
  done
  log "ready: http://127.0.0.1:$port/zipkin/"
}

stop() {
  if ! running; then rm -f "$pidfile"; log "not running"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running pid $(cat "$pidfile") port $port"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
