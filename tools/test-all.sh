#!/usr/bin/env bash
# Runs otpgate's whole test suite on a fresh Debian machine: installs what
# the tests need (PostgreSQL, Chromium and its driver, the SMSC simulator's
# npm packages), then formatting, lints and every test with services
# required (a missing service fails instead of being skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need_apt+=(postgresql)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

for dir in tools/*/; do
  if [ -f "$dir/package-lock.json" ]; then
    echo "== npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

# Python tools the tests start (local SMTP server, API fuzzer…) live in a
# venv under target/, so a fresh machine gets them and the system stays clean.
if grep -q -v -E '^\s*(#|$)' tools/python/requirements.txt; then
  echo "== python venv in target/python"
  [ -x target/python/bin/python ] || python3 -m venv target/python
  target/python/bin/pip install -q --disable-pip-version-check -r tools/python/requirements.txt
fi
export OTPGATE_PYTHON="$PWD/target/python/bin/python"

# A one-off build gains nothing from incremental caches, and they take about a
# third of target/ (over 1 GB): a CI disk once filled up mid-build.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== cargo test"
OTPGATE_REQUIRE_SERVICES=1 cargo test --workspace --no-fail-fast
