#!/bin/sh
# One-shot (compose service temporal-schema, image temporalio/admin-tools): creates Temporal's
# two databases in PostgreSQL and brings both schemas to the version the server image ships.
# Safe to run on every `docker compose up`: existing databases are kept, applied versions are
# skipped, and after a TEMPORAL_VERSION bump the new schema versions are applied.
# Then the ledger (README "Ledger and reports"): a role `ledger` with LEDGER_POSTGRES_PASSWORD, no
# other right, owning a database `ledger`; Temporal's databases refuse it (CONNECT revoked from
# PUBLIC). Safe to run again: the role's password is set to the current value each time.
# Environment: POSTGRES_HOST, POSTGRES_USER, SQL_PASSWORD (read by temporal-sql-tool and psql),
# LEDGER_POSTGRES_PASSWORD.
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

echo "temporal-schema: the ledger's role and database"
: "${LEDGER_POSTGRES_PASSWORD:?set LEDGER_POSTGRES_PASSWORD}"
PGPASSWORD="$SQL_PASSWORD" psql -h "$HOST" -p 5432 -U "$USER" -d postgres -v ON_ERROR_STOP=1 -q \
  -v ledger_password="$LEDGER_POSTGRES_PASSWORD" <<'SQL'
SELECT 'CREATE ROLE ledger LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledger')\gexec
ALTER ROLE ledger WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'ledger_password';
SELECT 'CREATE DATABASE ledger OWNER ledger' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ledger')\gexec
REVOKE ALL ON DATABASE ledger FROM PUBLIC;
REVOKE CONNECT ON DATABASE temporal, temporal_visibility FROM PUBLIC;
SQL

echo "temporal-schema: done"
