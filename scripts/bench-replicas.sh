#!/usr/bin/env bash
# Answers per second through two studio replicas on one PostgreSQL database, computed by WORKERS worker processes,
# beside one one-process studio on SQLite (the embedded default), with `unike bench-api` (loopback only).
#   scripts/bench-replicas.sh postgres://USER@HOST:PORT/EMPTY_DB [WORKERS=2] [REQUESTS=200] [CONCURRENCY=4]
# Needs a release build (cargo build --release -p unike-cli) and an empty database it may fill.
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${1:?usage: scripts/bench-replicas.sh postgres://USER@HOST:PORT/EMPTY_DB [WORKERS] [REQUESTS] [CONCURRENCY]}"
WORKERS="${2:-2}"; REQUESTS="${3:-200}"; CONCURRENCY="${4:-4}"
U=target/release/unike
TMP="$(mktemp -d /tmp/unike-bench-replicas.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
wait_up() { for _ in $(seq 1 600); do curl -sf "http://$1/api/health" >/dev/null && return 0; sleep 0.1; done; return 1; }

echo "## one process (SQLite)"
$U serve --db "sqlite://$TMP/one.db" --addr 127.0.0.1:18083 2>"$TMP/one.log" & PIDS+=($!)
wait_up 127.0.0.1:18083
$U bench-api --addr 127.0.0.1:18083 --requests "$REQUESTS" --concurrency "$CONCURRENCY"
kill "${PIDS[-1]}"

echo; echo "## two replicas (PostgreSQL), $WORKERS worker(s)"
for port in 18081 18082; do
  $U serve --db "$DB" --data-dir "$TMP/data" --workers external --addr "127.0.0.1:$port" 2>"$TMP/r$port.log" & PIDS+=($!)
done
for i in $(seq 1 "$WORKERS"); do
  $U worker --db "$DB" --data-dir "$TMP/data" --kinds interactive --name "bench-$i" 2>"$TMP/w$i.log" & PIDS+=($!)
done
wait_up 127.0.0.1:18081; wait_up 127.0.0.1:18082
until [ "$(curl -sf http://127.0.0.1:18081/api/health | grep -o '"workers":[0-9]*' | cut -d: -f2)" = "$WORKERS" ]; do sleep 0.2; done
$U bench-api --addr 127.0.0.1:18081 --requests "$REQUESTS" --concurrency "$CONCURRENCY" >"$TMP/a.md" &
A=$!
$U bench-api --addr 127.0.0.1:18082 --requests "$REQUESTS" --concurrency "$CONCURRENCY" >"$TMP/b.md"
wait "$A"
echo "replica A:"; cat "$TMP/a.md"; echo "replica B:"; cat "$TMP/b.md"
