#!/usr/bin/env bash
# Benchmarks otpgate end to end, on SQLite and on PostgreSQL in the same run:
# a release build, one node per backend (PostgreSQL is a throwaway server
# started here, fsync on), and `otpgate bench` against each — after a 3 s
# warm-up (and `analyze` on PostgreSQL) — a /healthz
# baseline phase, then C virtual users doing token → send → code from the
# inbox → validate for D seconds. Measures and prints; asserts nothing.
# Usage: tools/bench.sh [CONCURRENCY] [SECONDS]   (as root; bounded)
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-16}
D=${2:-10}

cargo build --release -p otpgate --quiet
BIN=$PWD/target/release/otpgate
W=$(mktemp -d /tmp/otpgate-bench.XXXXXX)
chmod 755 "$W"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ -f "$W/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PORT=$(free_port)
mkdir "$W/pg" && chown postgres "$W/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg/log" -w \
  -o "-p $PORT -k $W/pg -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on" start >/dev/null
runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres otpgate_bench

for backend in sqlite postgres; do
  case $backend in
    sqlite) DB="sqlite://$W/otpgate.db" ;;
    postgres) DB="postgres://postgres@127.0.0.1:$PORT/otpgate_bench" ;;
  esac
  CID=$("$BIN" customer create --password 'bench password' --credits 100000000 --database "$DB")
  # One account sending far more than the fraud defence's caps allow: caps
  # off (0), the guard on. The caps' queries still run on every send.
  OTPGATE_FRAUD__ACCOUNT_HOUR_MESSAGES=0 OTPGATE_FRAUD__ACCOUNT_DAY_MESSAGES=0 \
  OTPGATE_FRAUD__ACCOUNT_HOUR_CREDITS=0 OTPGATE_FRAUD__ACCOUNT_DAY_CREDITS=0 \
  OTPGATE_LOG=info "$BIN" serve --listen 127.0.0.1:0 --database "$DB" 2>"$W/$backend.log" >/dev/null &
  SERVER_PID=$!
  URL=""
  for _ in $(seq 1 100); do
    URL=$(grep -o 'address=http://[0-9.:]*' "$W/$backend.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$URL" ] && break
    sleep 0.1
  done
  [ -n "$URL" ] || { echo "the $backend server did not start"; cat "$W/$backend.log"; exit 1; }
  # A short warm-up, then fresh planner statistics, so both backends are
  # measured in steady state (on a brand-new PostgreSQL table the planner
  # has no statistics yet and may pick a poor index until autovacuum runs).
  "$BIN" bench --url "$URL" --customer-id "$CID" --password 'bench password' \
    --inbox-database "$DB" -c "$C" -d 3 --baseline 0 >/dev/null
  if [ "$backend" = postgres ]; then
    psql -q -h 127.0.0.1 -p "$PORT" -U postgres -d otpgate_bench -c analyze
  fi
  echo "=== $backend ($URL)"
  "$BIN" bench --url "$URL" --customer-id "$CID" --password 'bench password' \
    --inbox-database "$DB" -c "$C" -d "$D" --baseline 5
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
done
