#!/bin/sh
# One-shot (compose service temporal-schema, image temporalio/admin-tools): creates Temporal's
# two databases in PostgreSQL and brings both schemas to the version the server image ships.
# Safe to run on every `docker compose up`: existing databases are kept, applied versions are
# skipped, and after a TEMPORAL_VERSION bump the new schema versions are applied.
# Environment: POSTGRES_HOST, POSTGRES_USER, SQL_PASSWORD (read by temporal-sql-tool).
set -eu

HOST="${POSTGRES_HOST:-postgresql}"
USER="${POSTGRES_USER:-temporal}"
SCHEMA_DIR="${TEMPORAL_SCHEMA_DIR:-/etc/temporal/schema/postgresql/v12}"

echo "temporal-schema: waiting for PostgreSQL at ${HOST}:5432"
tries=0
until nc -z -w 5 "$HOST" 5432; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "temporal-schema: PostgreSQL did not answer on ${HOST}:5432" >&2
    exit 1
  fi
  sleep 2
done

sql() {
  temporal-sql-tool --plugin postgres12 --ep "$HOST" -p 5432 -u "$USER" "$@"
}

for db in temporal temporal_visibility; do
  case "$db" in
    temporal) dir="$SCHEMA_DIR/temporal/versioned" ;;
    *) dir="$SCHEMA_DIR/visibility/versioned" ;;
  esac
  echo "temporal-schema: database ${db}"
  sql --db "$db" create
  sql --db "$db" setup-schema -v 0.0
  sql --db "$db" update-schema -d "$dir"
done

echo "temporal-schema: done"
