#!/usr/bin/env bash
# Deployment checks, for CI (called from scripts/test.sh) and by hand:
#   1. the systemd unit: verify + exposure <= 2.5, sysusers/tmpfiles (check-unit.sh)
#   2. the aarch64 release build, cross-compiled without containers, and the
#      library's unit tests under qemu-aarch64 (cross-build.sh --test)
#   3. the arm64 .deb (cargo-deb, installed here if missing) and its contents
#      (check-deb.sh)
# Installs what it needs (apt packages, rustup target, cargo-deb) itself,
# idempotently. Prints the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
DEB_ARCH=arm64
CARGO_DEB_VERSION=3.8.0

t0=$SECONDS
step() { echo "== ci-deploy: $* ($((SECONDS - t0)) s so far)"; }

step "check-unit"
bash scripts/check-unit.sh

step "cross build + unit tests under qemu ($TARGET)"
bash scripts/cross-build.sh --test "$TARGET"

# The same target dir cross-build.sh used.
if [ -z "${CROSS_TARGET_DIR:-}" ]; then
  native_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  CROSS_TARGET_DIR="${native_dir:-$PWD/target}-cross"
fi

step "cargo-deb"
if [ "$(cargo deb --version 2>/dev/null | awk '{print $NF}' | tr -d v)" != "$CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
# cargo-deb's $auto runs dpkg-shlibdeps, which maps each library the binary
# links to its package through installed packages' symbols/shlibs files. The
# target's libraries are not installed here but unpacked in the sysroot
# (with their symbols/shlibs merged into its DEBIAN/): a dpkg-shlibdeps first
# in PATH adds -S<sysroot>, "look in this package build dir first".
sysroot="$CROSS_TARGET_DIR/sysroot-$DEB_ARCH"
wrap="$CROSS_TARGET_DIR/shlibdeps-$DEB_ARCH"
mkdir -p "$wrap"
printf '#!/bin/sh\nexec /usr/bin/dpkg-shlibdeps "-S%s" "$@"\n' "$sysroot" >"$wrap/dpkg-shlibdeps"
chmod +x "$wrap/dpkg-shlibdeps"
out="$CROSS_TARGET_DIR/$TARGET/debian"
rm -rf "$out"; mkdir -p "$out"
PATH="$wrap:$PATH" CARGO_TARGET_DIR="$CROSS_TARGET_DIR" \
  cargo deb --no-build --locked --target "$TARGET" --output "$out/"
deb="$(ls "$out"/robotd_*_"$DEB_ARCH".deb)"
dpkg-deb -f "$deb" Depends | sed 's/^/ci-deploy: Depends: /'

step "check-deb $deb"
bash scripts/check-deb.sh "$deb" "$DEB_ARCH"

step "done"
echo "ci-deploy: OK in $((SECONDS - t0)) s"
