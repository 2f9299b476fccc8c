#!/usr/bin/env bash
# The secret files docker-compose.yml mounts (compose `secrets:`), made once before the first
# `docker compose up`:   deploy/compose/make-secrets.sh [DIR]     (default DIR: <repo>/.run/compose/secrets)
#
# A file that exists is never overwritten: rotating a secret is deliberate (deploy/README.md, Keys and passwords).
#   postgres-superuser               the PostgreSQL superuser's password (the postgres image, never a service)
#   db-<service>                     each service's own PostgreSQL role (deploy/compose/postgres/init-databases.sh)
#   data-key-<service>               each service's key-encryption key: base64url of 32 random bytes
#                                    (ENLACE_DATA_KEY_FILE; docs/security.md). Back these up apart from the databases.
#   scram-<principal>                a SCRAM-SHA-512 password for every Kafka principal: enlace-admin (the broker's
#                                    super user, used by the topics job) and every principal of bus.yaml
#   kafka-ca.pem, kafka-ca.key       a CA for the broker's certificate; the key stays here, never mounted
#   kafka-broker.pem                 the broker's private key and certificate (SAN kafka, localhost, 127.0.0.1)
#
# Modes: the directory is 0700, so on the host only its owner reaches the files. The files the containers read
# are 0644: compose bind-mounts a file secret with its host owner and mode (it cannot set uid or mode for files),
# and the containers read them as their own users (enlace 10001, kafka appuser, postgres 999).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${1:-$repo/.run/compose/secrets}"
services=(intake referral notification)
# enlace-admin and the principals of libs/enlace_platform/bus.yaml (tests/deploy/test_compose.py keeps them equal).
principals=(enlace-admin intake referral notification enlace-ops enlace-integrator enlace-integrator-enforcement)

command -v openssl >/dev/null || { echo "make-secrets: openssl is required" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"

# 32 random bytes as hex: nothing to quote in a JAAS line, --add-scram, a psql variable or a URL.
password() { [ -f "$dir/$1" ] || { openssl rand -hex 32 > "$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1"; }; }
# What enlace_platform.crypto.load_key_encryption_key reads: base64url of 32 bytes.
data_key() {
  [ -f "$dir/$1" ] || { openssl rand 32 | openssl base64 -A | tr '+/' '-_' > "$dir/$1.tmp" \
                        && mv "$dir/$1.tmp" "$dir/$1"; }
}

password postgres-superuser
for s in "${services[@]}"; do password "db-$s"; data_key "data-key-$s"; done
for p in "${principals[@]}"; do password "scram-$p"; done

if [ ! -f "$dir/kafka-broker.pem" ]; then
  (
    umask 077
    cd "$dir"
    [ -f kafka-ca.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout kafka-ca.key -out kafka-ca.pem -days 825 -subj "/CN=Enlace compose Kafka CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    # CN=enlace-broker: the controller listener admits only this certificate (mutual TLS, as in cluster mode).
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout broker.key -out broker.csr \
      -subj "/CN=enlace-broker" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:kafka,DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyAgreement" "extendedKeyUsage=serverAuth,clientAuth" > broker.ext
    openssl x509 -req -in broker.csr -CA kafka-ca.pem -CAkey kafka-ca.key -CAcreateserial -out broker.crt \
      -days 825 -extfile broker.ext 2>/dev/null
    # Kafka's PEM keystore: the unencrypted PKCS#8 key, then the certificate chain, in one file.
    cat broker.key broker.crt kafka-ca.pem > kafka-broker.pem.tmp
    mv kafka-broker.pem.tmp kafka-broker.pem
    rm -f broker.key broker.csr broker.ext broker.crt kafka-ca.srl
  )
fi

chmod 644 "$dir"/*
chmod 600 "$dir/kafka-ca.key"
echo "secrets in $dir" >&2
