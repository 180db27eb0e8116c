#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lint, build and
# every test (unit + integration against real Mosquitto brokers started on
# free loopback ports by the tests themselves). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo build (no warnings)"
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo build --all-targets --locked
echo "== cargo test"
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo test --all-targets --locked -- --test-threads 2
