#!/usr/bin/env bash
# Fuzz smoke run (CI): build every cargo-fuzz target in fuzz/ and run each for
# a bounded time, starting from the corpus kept in fuzz/corpus/<target>/.
# Fails on the first crash, panic, failed invariant, leak, timeout or OOM;
# the input that did it is left in fuzz/artifacts/<target>/ and printed.
# Long runs are documented commands in docs/fuzzing.md, not CI.
#
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_SANITIZER address (default) or none
#   FUZZ_TARGETS   space-separated subset (default: all)
#
# Works from a clean checkout: installs cargo-fuzz if missing. cargo-fuzz
# passes -Z flags to rustc (sanitizer, coverage options); with the stable
# toolchain they are allowed through RUSTC_BOOTSTRAP=1 (no nightly needed).
# The repo's corpus is only read: new inputs go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECONDS:-20}"
SAN="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

bash scripts/setup.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "== cargo fuzz build (sanitizer: $SAN)"
start=$(date +%s)
cargo fuzz build --sanitizer "$SAN"
echo "   built in $(( $(date +%s) - start )) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $TARGETS; do
  echo "== fuzz $t for ${SECS}s"
  mkdir -p "$work/$t"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: memory bound per process.
  # -seed: a fixed seed makes the smoke run repeatable (a gate, not a search:
  # on a slower machine it runs a prefix of the same inputs); long runs in
  # docs/fuzzing.md use random seeds. FUZZ_SEED=0 asks libFuzzer for a random one.
  if ! cargo fuzz run --sanitizer "$SAN" "$t" "$work/$t" "corpus/$t" -- \
      -seed="${FUZZ_SEED:-1}" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log"
    echo "FAIL: fuzz target $t crashed; reproduce with:" >&2
    ls "artifacts/$t/" 2>/dev/null | sed "s|^|  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $SAN $t fuzz/artifacts/$t/|" >&2 || true
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$work/$t.log" | sed 's/^/   /'
done
echo "== fuzz smoke: all targets ran ${SECS}s without a crash"
