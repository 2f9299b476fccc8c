#!/bin/sh
# The Enlace image's entrypoint (deploy/Dockerfile): PGPASSWORD from the file PGPASSWORD_FILE names, then the
# command. A service's *_DATABASE_URL carries no password; asyncpg then takes libpq's PGPASSWORD, so the password
# stays out of the compose file, the URL and `docker inspect`. Without PGPASSWORD_FILE nothing changes.
set -eu
if [ -n "${PGPASSWORD_FILE:-}" ]; then
  PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
  export PGPASSWORD
  unset PGPASSWORD_FILE
fi
exec "$@"
