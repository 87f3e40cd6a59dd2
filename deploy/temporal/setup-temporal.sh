#!/bin/sh
# One-shot (compose service temporal-setup, image temporalio/admin-tools), run on every
# `docker compose up` before the worker and the web app start:
# 1. the namespace exists, with the retention of TEMPORAL_RETENTION (a closed referral's
#    history is deleted that long after it closes);
# 2. every search attribute of REFERRAL_SEARCH_ATTRIBUTES ("Name=Type ...", the list in
#    docker-compose.yml, kept equal to workflows/search_attributes.py ALL by the tests) exists
#    with its type. One that exists already with the same type is fine; one with another type
#    is an error, never skipped silently (operators could not filter on it).
# Environment: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_RETENTION, REFERRAL_SEARCH_ATTRIBUTES.
set -eu

NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${TEMPORAL_RETENTION:-30d}"
ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"
ATTRIBUTES="${REFERRAL_SEARCH_ATTRIBUTES:?REFERRAL_SEARCH_ATTRIBUTES is empty}"

say() { echo "temporal-setup: $*"; }
fail() { echo "temporal-setup: $*" >&2; exit 1; }

# As the official samples do: talk to the frontend by its IPv4 address when it resolves.
host="${ADDRESS%:*}"
port="${ADDRESS##*:}"
ip="$(getent ahosts "$host" 2>/dev/null | grep STREAM | head -1 | awk '{print $1}' || true)"
if [ -n "$ip" ]; then ADDRESS="${ip}:${port}"; fi

t() { temporal "$@" --address "$ADDRESS"; }

# retry N COMMAND...: run COMMAND until it succeeds, at most N times, 2 s apart.
retry() {
  n="$1"; shift
  i=1
  until "$@"; do
    [ "$i" -ge "$n" ] && return 1
    i=$((i + 1))
    sleep 2
  done
}

serving() { t operator cluster health 2>/dev/null | grep -q SERVING; }

# The type a search attribute has now, or nothing (the CLI's "Name  Type" table).
current_type() {
  t operator search-attribute list --namespace "$NAMESPACE" 2>/dev/null | awk -v n="$1" '$1 == n { print $2 }'
}

has_type() { [ "$(current_type "$1")" = "$2" ]; }

say "waiting for the Temporal server at ${host}:${port}"
retry 90 serving || fail "the Temporal server at ${host}:${port} is not serving"

if t operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
  say "namespace ${NAMESPACE} exists"
else
  say "creating namespace ${NAMESPACE}"
  t operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION" \
    || t operator namespace describe --namespace "$NAMESPACE" >/dev/null \
    || fail "could not create namespace ${NAMESPACE}"
fi
# A new namespace takes a few seconds to reach the namespace cache: retry.
set_retention() { t operator namespace update --namespace "$NAMESPACE" --retention "$RETENTION" >/dev/null 2>&1; }
if ! retry 30 set_retention; then
  t operator namespace update --namespace "$NAMESPACE" --retention "$RETENTION" || true
  fail "could not set the retention of ${NAMESPACE} to ${RETENTION}"
fi
say "namespace ${NAMESPACE}: retention ${RETENTION}"

for spec in $ATTRIBUTES; do
  name="${spec%%=*}"
  type="${spec#*=}"
  if [ -z "$name" ] || [ -z "$type" ] || [ "$name" = "$spec" ]; then
    fail "bad entry '${spec}' in REFERRAL_SEARCH_ATTRIBUTES (want Name=Type)"
  fi
  have="$(current_type "$name")"
  if [ -n "$have" ] && [ "$have" != "$type" ]; then
    fail "search attribute ${name} has type ${have}, expected ${type}: fix it by hand"
  fi
  if [ -z "$have" ]; then
    # Some CLI versions answer "already exists" for an existing attribute; the check below
    # decides either way.
    if ! out="$(t operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type "$type" 2>&1)"; then
      echo "$out" | grep -qi "already exists" || fail "could not create search attribute ${name} (${type}): ${out}"
    fi
  fi
  retry 15 has_type "$name" "$type" \
    || fail "search attribute ${name} has type '$(current_type "$name")', expected ${type}: fix it by hand"
  say "search attribute ${name}: ${type}"
done

say "done"
