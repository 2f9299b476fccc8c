#!/usr/bin/env bash
# Starts and stops the three services as background uvicorn processes (no Docker needed).
#   services.sh start | stop | status
# Logs and pid files go to $ENLACE_RUN_DIR (default .run/); each service is ready when its /readyz
# answers 200. Ports: INTAKE_PORT, REFERRAL_PORT, NOTIFICATION_PORT (default 8001-8003). Everything
# else (databases, Kafka, tracing) comes from the environment, see docs/operations.md. With KAFKA_CLUSTER=3
# (make up CLUSTER=3) each service connects to the local cluster as its own principal: its ENLACE_KAFKA_*
# settings (SASL_SSL, its SCRAM password file, the cluster's CA) come from deploy/kafka/kafka.sh client-env.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="${ENLACE_RUN_DIR:-$repo/.run}"
python="${PYTHON_BIN:-$repo/.venv/bin/python}"
services=("intake:${INTAKE_PORT:-8001}" "referral:${REFERRAL_PORT:-8002}" "notification:${NOTIFICATION_PORT:-8003}")

# Alive and not a zombie: a process killed a moment ago still answers kill -0 until it is reaped.
running() {
  [ -f "$run/$1.pid" ] || return 1
  local stat; stat="$(cat "/proc/$(cat "$run/$1.pid")/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"  # the fields after "pid (comm) ": the first is the state
  [ -n "$stat" ] && [ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}

# 200 from /readyz means the database and Kafka both answer (python: no curl needed).
ready() {
  "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$1/readyz" >/dev/null 2>&1
}

start() {
  mkdir -p "$run/logs"
  cd "$repo"
  for entry in "${services[@]}"; do
    name="${entry%%:*}"; port="${entry##*:}"
    if running "$name"; then echo "services: $name already running (pid $(cat "$run/$name.pid"))" >&2; continue; fi
    kafka_env=()
    if [ "${KAFKA_CLUSTER:-1}" != 1 ]; then
      kafka_settings="$("$repo/deploy/kafka/kafka.sh" client-env "$name")" || exit 1
      mapfile -t kafka_env <<<"$kafka_settings"
    fi
    # Each service's key-encryption key (docs/security.md) beside its state, unless the environment gives one.
    # On SIGTERM, requests in flight get 3 s, then the runtime's bounded stop (shutdown_* settings, ~10 s):
    # each service ends within 20 s whatever the broker does.
    env ${kafka_env[@]+"${kafka_env[@]}"} ENLACE_DATA_KEY_FILE="${ENLACE_DATA_KEY_FILE:-$run/$name-data.key}" \
      setsid nohup "$python" -m uvicorn --factory "$name.entrypoints.app:create_app" \
      --host 127.0.0.1 --port "$port" --no-access-log --timeout-graceful-shutdown 3 \
      >"$run/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$run/$name.pid"
    echo "services: started $name on 127.0.0.1:$port (log $run/logs/$name.log)" >&2
  done
  for entry in "${services[@]}"; do
    name="${entry%%:*}"; port="${entry##*:}"
    deadline=$((SECONDS + ${SERVICES_READY_TIMEOUT:-90}))
    until ready "$port"; do
      if ! running "$name"; then echo "services: $name exited; last log lines:" >&2; tail -20 "$run/logs/$name.log" >&2; exit 1; fi
      if [ $SECONDS -ge $deadline ]; then echo "services: $name not ready in time; see $run/logs/$name.log" >&2; exit 1; fi
      sleep 0.3
    done
    echo "services: $name ready at http://127.0.0.1:$port (docs at /docs)" >&2
  done
}

stop() {
  for entry in "${services[@]}"; do
    name="${entry%%:*}"
    if running "$name"; then
      pid="$(cat "$run/$name.pid")"
      kill "$pid" 2>/dev/null || true  # SIGTERM: graceful shutdown drains the relay and commits offsets
      # It ends within 20 s by design; SIGKILL only beyond that (uncommitted work is redelivered anyway).
      for _ in $(seq 1 84); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      echo "services: stopped $name" >&2
    fi
    rm -f "$run/$name.pid"
  done
}

status() {
  rc=0
  for entry in "${services[@]}"; do
    name="${entry%%:*}"
    if running "$name"; then echo "$name: running (pid $(cat "$run/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
