#!/usr/bin/env bash
# The whole test suite: installs what it needs, then the web app's checks,
# format, lint, build and every test (unit + integration against real
# Mosquitto brokers started on free loopback ports by the tests themselves,
# and the browser tests, tests/webapp.rs). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== web app: typecheck, unit tests (protocol vectors), build"
(cd web && npm run --silent typecheck && npm test --silent && npm run --silent build)

echo "== cargo fmt --check"
cargo fmt --all -- --check
# Clippy with -D warnings also fails on every rustc warning, so "no warnings"
# is checked here without rebuilding everything under different RUSTFLAGS.
echo "== cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# The network-namespace tests need root (CI runs as root); in CI a skip is a failure.
if [ "${CI:-}" = "true" ]; then export ROBOTD_NETNS_REQUIRED=1; fi
# Benchmarks are built (and linted above) but not run here: their goals live
# in docs/benchmarks.md, and `cargo bench` runs them.
cargo test --lib --bins --tests --locked -- --test-threads 2
cargo build --benches --locked
# A short smoke run of every cargo-fuzz target from its committed corpus
# (without ASan here to keep CI fast; docs/fuzzing.md has the long runs).
echo "== fuzz smoke: every cargo-fuzz target (installs cargo-fuzz if missing)"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz-smoke.sh
echo "== protocol vectors, recomputed independently (Python stdlib)"
python3 docs/vectors.py
echo "== deployment: systemd unit checks, aarch64 cross build + unit tests under qemu, .deb contents"
bash scripts/ci-deploy.sh
