#!/usr/bin/env bash
# Benchmarks otpgate end to end, on SQLite and on PostgreSQL in the same run:
# a release build, one node per backend (SQLite with synchronous=FULL, as
# always; PostgreSQL a throwaway server started here, fsync on), delivery
# running (the inbox channel), and `otpgate bench` against each after a
# short warm-up (and `analyze` on PostgreSQL): /healthz as the baseline,
# sends (C connections, one account, distinct valid numbers) with the
# outbox's drain time and the server's RSS, validations of those codes, and
# full flows (U users: token → send → code → validate). Prints a table per
# backend and writes all figures to target/bench/latest.json (the previous
# run's moves to target/bench/previous.json). Measures; asserts nothing.
#
# Usage: tools/bench.sh [SECONDS_PER_PHASE] [CONNECTIONS] [FLOW_USERS]
#   (as root, for `runuser postgres`; defaults 8, 64, 16; 127.0.0.1 only)
# PERF_DATA=FILE also records the server with `perf record -g` during an
# extra send phase before the measured one: the SQLite node's process, or,
# with PERF_BACKEND=postgres, the whole machine (a PostgreSQL send spends
# its time in the database's own processes too). BACKENDS="postgres" (or
# "sqlite") measures one backend only; the default is both. OTPGATE_BIN=PATH
# measures that binary instead of building one (to compare two builds with
# the same bench: the bench is the binary's own `bench` command, so use a
# build that has this script's phases).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}
C=${2:-64}
U=${3:-16}

if [ -n "${OTPGATE_BIN:-}" ]; then
  BIN=$OTPGATE_BIN
else
  cargo build --release -p otpgate --quiet
  BIN=$PWD/target/release/otpgate
fi
OUT=$PWD/target/bench
mkdir -p "$OUT"
[ -f "$OUT/latest.json" ] && mv "$OUT/latest.json" "$OUT/previous.json"
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

for backend in ${BACKENDS:-sqlite postgres}; do
  case $backend in
    sqlite) DB="sqlite://$W/otpgate.db" ;;
    postgres) DB="postgres://postgres@127.0.0.1:$PORT/otpgate_bench" ;;
  esac
  CID=$("$BIN" customer create --password 'bench password' --credits 100000000 --database "$DB")
  # One account sending far more than the fraud defence's caps allow: caps
  # off (0), and the conversion guard off, since the send phase validates
  # none of its codes until the validate phase (a cap or guard that is off
  # is not counted). The flow users all come from 127.0.0.1, so the token
  # throttle's per-address bound is raised above their concurrency.
  OTPGATE_TOKEN__MAX_FAILURES=100000 OTPGATE_TOKEN__MAX_FAILURES_PER_CUSTOMER=0 \
  OTPGATE_FRAUD__ACCOUNT_HOUR_MESSAGES=0 OTPGATE_FRAUD__ACCOUNT_DAY_MESSAGES=0 \
  OTPGATE_FRAUD__ACCOUNT_HOUR_CREDITS=0 OTPGATE_FRAUD__ACCOUNT_DAY_CREDITS=0 \
  OTPGATE_FRAUD__GUARD=false \
  OTPGATE_LOG=info "$BIN" serve --listen 127.0.0.1:0 --database "$DB" 2>"$W/$backend.log" >/dev/null &
  SERVER_PID=$!
  URL=""
  for _ in $(seq 1 100); do
    URL=$(grep -o 'address=http://[0-9.:]*' "$W/$backend.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$URL" ] && break
    sleep 0.1
  done
  [ -n "$URL" ] || { echo "the $backend server did not start"; cat "$W/$backend.log"; exit 1; }
  # Before any request: the bench's own idle figure comes after the
  # warm-up, once a password check has given the hashing thread its Argon2
  # memory (19 MiB, kept).
  echo "[$backend] rss at start: $(awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' /proc/$SERVER_PID/status)"
  bench() {
    "$BIN" bench --url "$URL" --customer-id "$CID" --password 'bench password' \
      --inbox-database "$DB" --server-pid "$SERVER_PID" "$@"
  }
  # A short warm-up, then fresh planner statistics, so both backends are
  # measured in steady state (on a brand-new PostgreSQL table the planner
  # has no statistics yet and may pick a poor index until autovacuum runs).
  bench -u "$U" -d 2 --phases flows >/dev/null
  if [ "$backend" = postgres ]; then
    psql -q -h 127.0.0.1 -p "$PORT" -U postgres -d otpgate_bench -c analyze
  fi
  if [ "$backend" = "${PERF_BACKEND:-sqlite}" ] && [ -n "${PERF_DATA:-}" ]; then
    if [ "$backend" = postgres ]; then target=(-a); else target=(-p "$SERVER_PID"); fi
    perf record -g -o "$PERF_DATA" "${target[@]}" -- sleep "$D" 2>/dev/null &
    PERF_PID=$!
    bench -c "$C" -d "$D" --phases send >/dev/null
    wait "$PERF_PID" || true
  fi
  # Idle means idle: the measured run reads the server's idle RSS first,
  # 3 s after the warm-up's last request (a hashing thread gives its Argon2
  # memory back after 2 s without a check).
  sleep 3
  echo
  bench -c "$C" -u "$U" -d "$D" --label "$backend" --json "$OUT/latest.json"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
done

python3 - "$OUT/latest.json" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))
if "sqlite" in runs and "postgres" in runs:
    s, p = (runs[k]["phases"]["flows"]["per_sec"] for k in ("sqlite", "postgres"))
    print(f"\nflows/s: postgres {p:.1f} / sqlite {s:.1f} = {p / s:.2f}")
EOF
