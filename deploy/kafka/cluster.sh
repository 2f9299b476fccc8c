# Cluster mode of kafka.sh (sourced by it when KAFKA_CLUSTER is set, e.g. KAFKA_CLUSTER=3): N KRaft nodes on
# loopback, each broker and controller at once, from the same jars, as a national deployment secures them:
#   - clients (the services, enlace-ops, integrators) on SASL_SSL with SCRAM-SHA-512, one principal each;
#   - brokers talk to each other on that listener as enlace-admin, the brokers' super user;
#   - the controller listener is mutual TLS: only a holder of the brokers' key (CN=enlace-broker) gets in;
#   - the standard authorizer, nothing allowed without an ACL (python -m enlace_platform.topics --acls).
# Created at the first start, kept after it (delete the state folder to start over):
#   tls/ca.pem (clients' CA file), tls/ca.key, tls/broker.{pem,key,p12}: the CA and the brokers' certificate
#   (SAN IP:127.0.0.1, DNS:localhost), made with openssl;
#   secrets/<principal>.password (mode 600): a random SCRAM password for every principal of bus.yaml and for
#   enlace-admin, stored in the metadata log by `kafka-storage format --add-scram`.
# Environment (all optional):
#   KAFKA_STATE_DIR        (default: <repo>/.run/kafka-cluster; node-<i>/ holds each node's data, config, logs)
#   KAFKA_PORT             client port of node 1 (default: 9192); node i listens on KAFKA_PORT+2(i-1), its
#                          controller on the next port up
#   KAFKA_PORTS, KAFKA_CONTROLLER_PORTS   comma-separated ports, one per node, instead (tests: free ports)
#   KAFKA_HEAP             JVM heap per node (default: 384m)
#   KAFKA_JVM_OPTS         other JVM flags per node (default: serial GC, client compiler only: fast start-up)
#   KAFKA_PYTHON           a Python with the project installed (default: <repo>/.venv/bin/python): names the
#                          principals from bus.yaml

cluster_nodes="$KAFKA_CLUSTER"
cluster_state="${KAFKA_STATE_DIR:-$repo/.run/kafka-cluster}"
cluster_heap="${KAFKA_HEAP:-384m}"
# Three JVMs starting on two cores: the client compiler only (JIT warm-up is most of a node's start-up CPU) and
# one GC thread; a local cluster carries test and demo traffic, not a country's.
cluster_jvm_opts="${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData}"
cluster_python="${KAFKA_PYTHON:-$repo/.venv/bin/python}"
cluster_base_port="${KAFKA_PORT:-9192}"
tls="$cluster_state/tls"
secrets="$cluster_state/secrets"
admin_principal="enlace-admin"
broker_cn="enlace-broker"   # the controller listener's only client: the brokers, by their certificate

client_port() {
  if [ -n "${KAFKA_PORTS:-}" ]; then cut -d, -f"$1" <<<"$KAFKA_PORTS"
  else echo $((cluster_base_port + 2 * ($1 - 1))); fi
}
controller_port_of() {
  if [ -n "${KAFKA_CONTROLLER_PORTS:-}" ]; then cut -d, -f"$1" <<<"$KAFKA_CONTROLLER_PORTS"
  else echo $(($(client_port "$1") + 1)); fi
}
node_dir() { echo "$cluster_state/node-$1"; }
node_pidfile() { echo "$(node_dir "$1")/kafka.pid"; }
# Alive and not a zombie (a killed node stays one until its parent, often init, reaps it).
pid_alive() {
  local stat; stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ -n "$stat" ] && [ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}
node_running() { local f; f="$(node_pidfile "$1")"; [ -f "$f" ] && pid_alive "$(cat "$f")"; }

cluster_bootstrap() {
  local i out=""
  for i in $(seq 1 "$cluster_nodes"); do out="${out:+$out,}127.0.0.1:$(client_port "$i")"; done
  echo "$out"
}

principals() {
  # Every principal bus.yaml declares, and the brokers' super user.
  "$cluster_python" -c 'from enlace_platform.bus import ADMIN, declared; print(ADMIN, *declared().principal_names())' \
    || { log "cannot read the principals from bus.yaml with $cluster_python (make venv, or set KAFKA_PYTHON)"
         exit 1; }
}

new_secret() {
  # 32 random bytes as hex: no character that needs quoting in a JAAS line or --add-scram.
  (umask 077; openssl rand -hex 32 > "$1")
}

make_tls() {
  [ -f "$tls/broker.p12" ] && return 0
  command -v openssl >/dev/null || { log "openssl is required for cluster mode"; exit 1; }
  log "creating a CA and the brokers' certificate in $tls"
  mkdir -p "$tls" "$secrets" && chmod 700 "$tls" "$secrets"
  [ -f "$secrets/keystore.password" ] || new_secret "$secrets/keystore.password"
  (
    umask 077; cd "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 825 \
      -subj "/CN=Enlace local Kafka CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout broker.key -out broker.csr \
      -subj "/CN=$broker_cn" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyAgreement" "extendedKeyUsage=serverAuth,clientAuth" > broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 825 \
      -extfile broker.ext 2>/dev/null
    # The brokers' keystore: its key, its certificate and the CA; it serves both listeners and is the
    # brokers' client certificate towards the controllers.
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker -out broker.p12.tmp \
      -passout "file:$secrets/keystore.password"
    mv broker.p12.tmp broker.p12
    rm -f broker.csr broker.ext ca.srl
    chmod 644 ca.pem broker.pem
  ) || { log "creating the TLS files failed"; exit 1; }
}

make_passwords() {
  local p
  mkdir -p "$secrets" && chmod 700 "$secrets"
  for p in $all_principals; do
    [ -f "$secrets/$p.password" ] || new_secret "$secrets/$p.password"
  done
}

write_node_config() {
  local i="$1" dir voters="" j
  dir="$(node_dir "$i")"
  for j in $(seq 1 "$cluster_nodes"); do voters="${voters:+$voters,}$j@127.0.0.1:$(controller_port_of "$j")"; done
  mkdir -p "$dir/data" "$dir/logs"
  (umask 077; cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=CLIENT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(controller_port_of "$i")
advertised.listeners=CLIENT://127.0.0.1:$(client_port "$i")
controller.listener.names=CONTROLLER
listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=CLIENT
# Clients and brokers authenticate with SCRAM on TLS; the brokers as the super user.
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \
  required username="$admin_principal" password="$(cat "$secrets/$admin_principal.password")";
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$(cat "$secrets/keystore.password")
ssl.key.password=$(cat "$secrets/keystore.password")
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
# The controller listener: mutual TLS, so only the brokers (certificate CN=$broker_cn) reach the controllers.
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9.-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:$admin_principal;User:$broker_cn
allow.everyone.if.no.acl.found=false
log.dirs=$dir/data
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
auto.create.topics.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
PROPS
  )
}

format_node() {
  local i="$1" dir p scram=()
  dir="$(node_dir "$i")"
  [ -f "$dir/data/meta.properties" ] && return 0
  for p in $all_principals; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=$p,password=$(cat "$secrets/$p.password")]")
  done
  java -Xms128m -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.xml" -Dkafka.logs.dir="$dir/logs" -cp "$libs/*" \
       kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" "${scram[@]}" \
       >"$dir/logs/format.log" 2>&1 \
    || { log "storage format of node $i failed"; cat "$dir/logs/format.log" >&2; return 1; }
}

launch_node() {
  local i="$1" dir
  dir="$(node_dir "$i")"
  if node_running "$i"; then log "node $i already running (pid $(cat "$(node_pidfile "$i")"))"; return 0; fi
  write_node_config "$i"
  # shellcheck disable=SC2086  # KAFKA_JVM_OPTS is a list of flags
  setsid nohup java -Xms"$cluster_heap" -Xmx"$cluster_heap" $cluster_jvm_opts -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
       -cp "$libs/*" kafka.Kafka "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$(node_pidfile "$i")"
  log "starting node $i on 127.0.0.1:$(client_port "$i") (controller $(controller_port_of "$i"))"
}

tls_probe() {
  # An ApiVersions round trip over TLS, verified against our CA for 127.0.0.1: the listener is open and
  # serves (a broker opens its client listener once it has caught up with the metadata). SASL comes after.
  "${PYTHON:-python3}" - "$1" "$tls/ca.pem" <<'PY' 2>/dev/null
import socket, ssl, struct, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
body = struct.pack(">hhih", 18, 0, 1, 6) + b"enlace"
with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", s.recv(4))[0]
        sys.exit(0 if size > 0 else 1)
PY
}

wait_node_ready() {
  local i="$1" deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  while [ $SECONDS -lt $deadline ]; do
    if ! node_running "$i"; then
      log "node $i exited; see $(node_dir "$i")/logs/server.log"
      tail -20 "$(node_dir "$i")/logs/server.log" >&2 || true
      return 1
    fi
    tls_probe "$(client_port "$i")" && return 0
    sleep 0.5
  done
  log "node $i not ready after ${KAFKA_START_TIMEOUT:-120}s"; return 1
}

cluster_start() {
  fetch
  [ "$cluster_nodes" -ge 3 ] || { log "KAFKA_CLUSTER must be 1 or at least 3 (replication 3, min.insync 2)"; exit 2; }
  local nodes i
  if [ -n "${1:-}" ]; then
    [ -f "$(node_dir "$1")/data/meta.properties" ] \
      || { log "node $1 was never formatted: start the cluster first"; exit 1; }
    nodes="$1"
  else
    nodes="$(seq 1 "$cluster_nodes")"
    all_principals="$(principals)" || exit 1
    make_tls
    make_passwords
    for i in $nodes; do write_node_config "$i"; done
    # The formats are JVMs of a few seconds each: side by side.
    local pids=()
    for i in $nodes; do format_node "$i" & pids+=($!); done
    for i in "${pids[@]}"; do wait "$i" || exit 1; done
  fi
  for i in $nodes; do launch_node "$i"; done
  for i in $nodes; do wait_node_ready "$i" || exit 1; done
  log "ready: $(cluster_bootstrap) (SASL_SSL, SCRAM-SHA-512; CA $tls/ca.pem; passwords in $secrets)"
}

cluster_stop() {
  local nodes i pid stopping=() alive
  nodes="${1:-$(seq 1 "$cluster_nodes")}"
  # SIGTERM to all first: each broker's controlled shutdown runs while the controller quorum is still there.
  for i in $nodes; do
    if node_running "$i"; then kill "$(cat "$(node_pidfile "$i")")" 2>/dev/null || true; stopping+=("$i")
    else rm -f "$(node_pidfile "$i")"; fi
  done
  [ ${#stopping[@]} -gt 0 ] || { log "not running"; return 0; }
  # A node gets 30 s. Stopping the whole cluster, the last node's controlled shutdown waits for a quorum that
  # has left (it never comes), so once it is the only one left it gets 3 s more, then SIGKILL: it has nothing
  # the others did not replicate, and its next start recovers its log.
  local ticks=60 last_ticks=6
  while [ $ticks -gt 0 ]; do
    alive=0
    for i in "${stopping[@]}"; do pid_alive "$(cat "$(node_pidfile "$i")")" && alive=$((alive + 1)); done
    [ $alive -eq 0 ] && break
    if [ -z "${1:-}" ] && [ $alive -eq 1 ] && [ "$cluster_nodes" -gt 1 ]; then
      last_ticks=$((last_ticks - 1)); [ $last_ticks -le 0 ] && break
    fi
    ticks=$((ticks - 1)); sleep 0.5
  done
  for i in "${stopping[@]}"; do
    pid="$(cat "$(node_pidfile "$i")")"
    if pid_alive "$pid"; then
      if [ $ticks -gt 0 ]; then log "node $i: the last one up, no quorum left for its controlled shutdown: SIGKILL"
      else log "node $i did not stop in 30 s: SIGKILL"; fi
      kill -9 "$pid" 2>/dev/null || true
    fi
    for _ in $(seq 1 20); do pid_alive "$pid" || break; sleep 0.1; done
    rm -f "$(node_pidfile "$i")"
    log "node $i stopped"
  done
}

cluster_status() {
  local i rc=0
  for i in $(seq 1 "$cluster_nodes"); do
    if node_running "$i"; then echo "node $i running pid $(cat "$(node_pidfile "$i")") port $(client_port "$i")"
    else echo "node $i stopped"; rc=1; fi
  done
  return $rc
}

client_env() {
  # The ENLACE_KAFKA_* settings a client of this cluster needs as PRINCIPAL (the password stays in its file).
  local principal="${1:?usage: kafka.sh client-env PRINCIPAL}"
  [ -f "$secrets/$principal.password" ] \
    || { log "no password for $principal in $secrets (start the cluster first)"; exit 1; }
  cat <<ENV
ENLACE_KAFKA_BOOTSTRAP_SERVERS=$(cluster_bootstrap)
ENLACE_KAFKA_SECURITY_PROTOCOL=SASL_SSL
ENLACE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
ENLACE_KAFKA_SASL_USERNAME=$principal
ENLACE_KAFKA_SASL_PASSWORD_FILE=$secrets/$principal.password
ENLACE_KAFKA_SSL_CAFILE=$tls/ca.pem
ENV
}

cluster_main() {
  case "${1:-}" in
    fetch) fetch ;;
    start) cluster_start "${2:-}" ;;
    stop) cluster_stop "${2:-}" ;;
    status) cluster_status ;;
    bootstrap) cluster_bootstrap ;;
    client-env) client_env "${2:-}" ;;
    *) echo "usage: KAFKA_CLUSTER=N $0 fetch|start [NODE]|stop [NODE]|status|bootstrap|client-env PRINCIPAL" >&2
       return 2 ;;
  esac
}
