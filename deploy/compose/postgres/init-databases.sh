#!/bin/sh
# One database per service, each owned by the service's own role (docs/operations.md, PostgreSQL): the postgres
# image runs this once, on an empty data directory (/docker-entrypoint-initdb.d), as the superuser.
# The service's role owns its database so that start-up can migrate it (tables, the audit log's trigger
# function) and erasure can VACUUM its key table; it is no superuser, and no other role may connect.
# Passwords come from the files compose mounts as /run/secrets/db-<service> (deploy/compose/make-secrets.sh);
# another folder may be given as the first argument.
set -eu

secrets="${1:-/run/secrets}"

for service in intake referral notification; do
  psql --no-psqlrc --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
       --set service="$service" --set password="$(cat "$secrets/db-$service")" <<'SQL'
CREATE ROLE :"service" LOGIN PASSWORD :'password';
CREATE DATABASE :"service" OWNER :"service";
REVOKE ALL ON DATABASE :"service" FROM PUBLIC;
SQL
done
