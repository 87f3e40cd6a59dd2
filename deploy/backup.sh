#!/bin/sh
# Nightly pg_dump with a retention, for docker-compose.yml's backup services (backup-temporal,
# backup-ledger, backup-keys; image postgres, the same as the `postgresql` service's, so pg_dump
# matches the server). README "Erasure and backups" says why there are three, each with its own
# volume and retention.
#
#   backup.sh [PG_DUMP_OPTION...]           every day at BACKUP_AT (UTC), until stopped
#   backup.sh --once [PG_DUMP_OPTION...]    one run now (dump, then delete the expired), then exit
#   backup.sh --check                       healthcheck: a dump in the last 26 hours (or started
#                                           less than 26 hours ago), else exit 1
#
# Environment:
#   BACKUP_DATABASES   the databases to dump, separated by spaces
#   BACKUP_KEEP_DAYS   retention in whole days: at every run (whether the dump worked or not),
#                      this script's files older than that are deleted
#   BACKUP_AT          HH:MM, the time of day (UTC) of the daily run
#   BACKUP_DIR         where the dumps go (default /backups)
#   BACKUP_LABEL       the files' name instead of the database's (one database only)
#   PGHOST, PGPORT, PGUSER, PGPASSWORD: read by pg_dump itself (libpq), never by this script.
#
# Each dump is `<label or database>-<UTC time>.dump` (pg_dump's custom format: pg_restore reads
# it), written as `.partial` and renamed once pg_dump succeeded, owner-only (umask 077). A file
# is deleted once older than BACKUP_KEEP_DAYS days less an hour, so the run of day N deletes the
# dump of day 0 (made a few seconds less than N days before): at most BACKUP_KEEP_DAYS daily
# dumps are kept, none older than BACKUP_KEEP_DAYS days. Needs `find -mmin` and `date +%s`
# (GNU or BusyBox).
set -eu

DIR="${BACKUP_DIR:-/backups}"
STARTED="${TMPDIR:-/tmp}/backup-started"
HEALTHY_MINUTES=1560 # a day and two hours

log() { echo "backup: $*"; }
fail() {
  echo "backup: $*" >&2
  exit 2
}

mode=loop
case "${1:-}" in
  --once) mode=once && shift ;;
  --check) mode=check && shift ;;
esac

: "${BACKUP_DATABASES:?set BACKUP_DATABASES (the databases to dump)}"
: "${BACKUP_KEEP_DAYS:?set BACKUP_KEEP_DAYS (retention in days)}"
case "$BACKUP_KEEP_DAYS" in
  '' | *[!0-9]* | 0*) fail "BACKUP_KEEP_DAYS must be a whole number of days, 1 or more: got '$BACKUP_KEEP_DAYS'" ;;
esac
count=0
for db in $BACKUP_DATABASES; do count=$((count + 1)); done
[ "$count" -ge 1 ] || fail "BACKUP_DATABASES is empty"
if [ -n "${BACKUP_LABEL:-}" ] && [ "$count" -ne 1 ]; then
  fail "BACKUP_LABEL names the files of one database; BACKUP_DATABASES lists $count"
fi

name_of() { echo "${BACKUP_LABEL:-$1}"; }

if [ "$mode" = check ]; then
  if [ -f "$STARTED" ] && [ -n "$(find "$STARTED" -mmin -"$HEALTHY_MINUTES")" ]; then
    exit 0
  fi
  for db in $BACKUP_DATABASES; do
    name=$(name_of "$db")
    if [ -z "$(find "$DIR" -maxdepth 1 -type f -name "$name-*.dump" -mmin -"$HEALTHY_MINUTES")" ]; then
      echo "backup: no dump of $name in $DIR in the last 26 hours" >&2
      exit 1
    fi
  done
  exit 0
fi

if [ "$mode" = loop ]; then
  at="${BACKUP_AT:?set BACKUP_AT (HH:MM, UTC)}"
  case "$at" in
    [01][0-9]:[0-5][0-9] | 2[0-3]:[0-5][0-9]) ;;
    *) fail "BACKUP_AT must be HH:MM (UTC, 00:00 to 23:59): got '$at'" ;;
  esac
fi

umask 077
mkdir -p "$DIR"

# A stop (docker compose stop/down) ends the wait or the dump at once; an unfinished dump is
# removed, never left half written (a key-table one would hold keys no retention counts).
partial=""
child=""
cleanup() {
  if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
  if [ -n "$partial" ]; then rm -f "$partial"; fi
}
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 130' INT
trap 'cleanup' EXIT

# Deletes this script's files of the databases older than the retention, and any leftover
# `.partial` (a dump cut by a kill -9 or a crash).
prune() {
  minutes=$((BACKUP_KEEP_DAYS * 1440 - 60))
  for db in $BACKUP_DATABASES; do
    name=$(name_of "$db")
    find "$DIR" -maxdepth 1 -type f -name "$name-*.dump.partial" -exec rm -f {} +
    find "$DIR" -maxdepth 1 -type f -name "$name-*.dump" -mmin +"$minutes" | while IFS= read -r old; do
      rm -f "$old" && log "deleted $old (older than $BACKUP_KEEP_DAYS days)"
    done
  done
}

# One run: every database, then the retention. Exit status 1 when a dump failed.
run() {
  status=0
  for db in $BACKUP_DATABASES; do
    name=$(name_of "$db")
    file="$DIR/$name-$(date -u +%Y%m%dT%H%M%SZ).dump"
    partial="$file.partial"
    pg_dump --format=custom --no-password --dbname="$db" --file="$partial" "$@" &
    child=$!
    if wait "$child"; then
      child=""
      mv "$partial" "$file"
      partial=""
      log "wrote $file ($(wc -c <"$file" | tr -d ' ') bytes)"
    else
      child=""
      rm -f "$partial"
      partial=""
      echo "backup: pg_dump of $db failed (no file written)" >&2
      status=1
    fi
  done
  prune
  return "$status"
}

if [ "$mode" = once ]; then
  prune
  run "$@"
  exit $?
fi

# Seconds from now to the next BACKUP_AT (UTC), at least a minute: `date +%s` counts no leap
# seconds, so its remainder by 86400 is the time of day in UTC.
seconds_to_next_run() {
  h=${at%%:*}
  m=${at#*:}
  target=$(((${h#0} + 0) * 3600 + (${m#0} + 0) * 60))
  now=$(($(date -u +%s) % 86400))
  wait_s=$(((target - now + 86400) % 86400))
  if [ "$wait_s" -lt 60 ]; then wait_s=$((wait_s + 86400)); fi
  echo "$wait_s"
}

touch "$STARTED"
prune
log "dumping $BACKUP_DATABASES every day at $at UTC into $DIR, keeping $BACKUP_KEEP_DAYS days"
while :; do
  wait_s=$(seconds_to_next_run)
  sleep "$wait_s" &
  child=$!
  wait "$child" || true
  child=""
  attempt=1
  # A failed dump is tried again every 10 minutes, three times; the healthcheck turns
  # unhealthy once no dump is younger than 26 hours.
  until run "$@"; do
    if [ "$attempt" -ge 4 ]; then
      echo "backup: giving up until tomorrow $at UTC" >&2
      break
    fi
    attempt=$((attempt + 1))
    sleep 600 &
    child=$!
    wait "$child" || true
    child=""
  done
done
