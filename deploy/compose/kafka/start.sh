#!/bin/sh
# The entrypoint of docker-compose.yml's `kafka` service (the apache/kafka image, whose own entrypoint cannot add
# SCRAM credentials when it formats the storage). Runs as the image's user; POSIX sh.
#   1. server.properties (mounted beside this script) plus the broker's SCRAM login, into a private directory;
#   2. the client settings of the health check (kafka-broker-api-versions.sh --command-config), as enlace-admin;
#   3. at the first start only: format the storage with a SCRAM-SHA-512 credential for every principal whose
#      password compose mounts as /run/secrets/scram-<principal>;
#   4. exec the broker.
set -eu

secrets=/run/secrets
conf=/tmp/enlace-kafka
data=/var/lib/kafka/data
cluster_id="ZW5sYWNlLWxvY2FsLWthZg"  # the fixed id of deploy/kafka/kafka.sh
login="org.apache.kafka.common.security.scram.ScramLoginModule required"

umask 077
mkdir -p "$conf"
admin_password="$(cat "$secrets/scram-enlace-admin")"
cp "$(dirname "$0")/server.properties" "$conf/server.properties"
printf '%s\n' "listener.name.internal.scram-sha-512.sasl.jaas.config=$login username=\"enlace-admin\" \
password=\"$admin_password\";" >> "$conf/server.properties"

cat > "$conf/admin.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$login username="enlace-admin" password="$admin_password";
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/kafka-ca.pem
PROPS

if [ ! -f "$data/meta.properties" ]; then
  set --
  for file in "$secrets"/scram-*; do
    principal="${file#"$secrets"/scram-}"
    set -- "$@" --add-scram "SCRAM-SHA-512=[name=$principal,password=$(cat "$file")]"
  done
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "$cluster_id" --config "$conf/server.properties" "$@"
fi

exec /opt/kafka/bin/kafka-server-start.sh "$conf/server.properties"
