#!/usr/bin/env bash
# Benchmark: the `drive(id)` GraphQL query under 50 concurrent clients for 20 s, on SQLite and on
# PostgreSQL, with wrk as the load generator. Reports requests/s, p50, p99 and the server's
# peak RSS. Usage: bash tests/bench/drive-query.sh [duration, default 20s] [connections, default 50]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-20s}
CONNECTIONS=${2:-50}
PG_URL=${MILEPOST_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
cargo build --release -q -p milepost-api
BIN=$PWD/target/release/milepost
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/query.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = '{"query":"query($id: ID!) { drive(id: $id) { id vehicle city startedAt endedAt tags events { at kind } scenarios { id label } } }","variables":{"id":"bench-drive"}}'
LUA

run() {
  local backend=$1 url=$2 port=$3
  local dir=$WORK/$backend
  mkdir -p "$dir"
  export MILEPOST_DATA_DIR=$dir MILEPOST_DATABASE_URL=$url MILEPOST_SERVER_LISTEN=127.0.0.1:$port MILEPOST_CATALOG_SYNC_INTERVAL=off MILEPOST_LOG=warn
  TOKEN=$("$BIN" token create --name "bench-$RANDOM" --role admin 2>/dev/null)
  export TOKEN
  "$BIN" serve > "$dir/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/graphql" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"query":"mutation { registerDrive(input: { id: \"bench-drive\", vehicle: \"gz-004\", city: \"guangzhou\", startedAt: \"2026-11-01T08:00:00Z\", endedAt: \"2026-11-01T09:00:00Z\", tags: [\"night\", \"rain\"], events: [{ at: \"2026-11-01T08:10:00Z\", kind: \"disengagement\" }], scenarios: [{ label: \"cut-in\", start: \"2026-11-01T08:09:00Z\", end: \"2026-11-01T08:09:30Z\" }] }) { id } }"}' >/dev/null
  # Warm-up, then the measured run.
  wrk -t2 -c"$CONNECTIONS" -d3s -s "$WORK/query.lua" "http://127.0.0.1:$port/graphql" >/dev/null
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/query.lua" "http://127.0.0.1:$port/graphql" > "$dir/wrk.txt"
  local rps p50 p99 rss errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$dir/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$dir/wrk.txt")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$dir/wrk.txt" | tr '\n' ' ')
  rss=$(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  printf '| %-10s | %10s | %8s | %8s | %8s | %s\n' "$backend" "$rps" "$p50" "$p99" "$rss" "${errors:-}"
}

echo "drive(id) query, $CONNECTIONS connections, $DURATION, wrk -t2; $(nproc) cores"
printf '| %-10s | %10s | %8s | %8s | %8s |\n' backend "requests/s" p50 p99 "peak RSS"
run sqlite "sqlite://$WORK/sqlite/catalog.db" 18081
if psql "$PG_URL" -qc 'drop database if exists milepost_bench' 2>/dev/null && psql "$PG_URL" -qc 'create database milepost_bench'; then
  run postgres "${PG_URL%/*}/milepost_bench" 18082
  psql "$PG_URL" -qc 'drop database if exists milepost_bench with (force)' || true
else
  echo "postgres: skipped (no server at $PG_URL)"
fi
