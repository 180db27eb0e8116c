#!/usr/bin/env bash
# Check the systemd files offline (no systemd as PID 1 needed):
#   1. `systemd-analyze verify` on a copy of systemd/robotd.service whose
#      /usr/bin/robotd points to $ROBOTD_BIN (default: a stub), because verify
#      insists the ExecStart= binary exists. Any output (unknown key, bad
#      value, missing binary) is a failure: verify itself exits 0 on those.
#   2. `systemd-analyze security --offline=true`: overall exposure must be
#      <= $MAX_EXPOSURE (default 2.5).
#   3. The directives the design depends on are present (notify + watchdog,
#      safe-stop after every exit, user/groups, directories, device policy).
#   4. The sysusers and tmpfiles snippets apply cleanly to an empty root.
# Usage: scripts/check-unit.sh            (ROBOTD_BIN=target/.../robotd optional)
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE="${MAX_EXPOSURE:-2.5}"
UNIT=systemd/robotd.service
SYSUSERS=systemd/robotd.sysusers
TMPFILES=systemd/robotd.tmpfiles

if ! command -v systemd-analyze >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
err() { echo "check-unit: FAIL: $*" >&2; fail=1; }

# 1. verify
bin="${ROBOTD_BIN:-}"
if [ -z "$bin" ]; then
  bin="$work/robotd"
  printf '#!/bin/sh\nexit 0\n' >"$bin"
  chmod +x "$bin"
fi
bin="$(realpath "$bin")"
mkdir -p "$work/unit"
sed "s#/usr/bin/robotd#$bin#g" "$UNIT" >"$work/unit/robotd.service"
out="$(systemd-analyze verify "$work/unit/robotd.service" 2>&1 || echo "(exit status $?)")"
if [ -n "$out" ]; then
  err "systemd-analyze verify $UNIT:"
  echo "$out" | sed "s#$work/unit/##" >&2
else
  echo "check-unit: verify OK"
fi

# 2. security exposure (the real file: the path of ExecStart= does not matter here)
sec="$(systemd-analyze security --offline=true "$UNIT" 2>&1 || true)"
score="$(echo "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -1)"
if [ -z "$score" ]; then
  err "no exposure score in systemd-analyze security output:"
  echo "$sec" >&2
elif awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
  err "exposure $score > $MAX_EXPOSURE; the settings that cost most:"
  echo "$sec" | grep '✗' | sort -t' ' -k1 >&2
else
  echo "check-unit: exposure $score <= $MAX_EXPOSURE"
fi

# 3. required directives (one per line, exact)
required=(
  "Type=notify"
  "NotifyAccess=main"
  "ExecStart=/usr/bin/robotd run"
  "ExecStopPost=/usr/bin/robotd safe-stop"
  "Restart=on-failure"
  "User=robotd"
  "SupplementaryGroups=gpio video audio"
  "StateDirectory=robotd"
  "ConfigurationDirectory=robotd"
  "RuntimeDirectory=robotd"
  "ProtectSystem=strict"
  "ProtectHome=yes"
  "PrivateTmp=yes"
  "NoNewPrivileges=yes"
  "CapabilityBoundingSet="
  "DevicePolicy=closed"
  "SystemCallFilter=@system-service"
  "WantedBy=multi-user.target"
)
for line in "${required[@]}"; do
  grep -qxF "$line" "$UNIT" || err "$UNIT lacks the line: $line"
done
grep -qE '^WatchdogSec=[1-9]' "$UNIT" || err "$UNIT lacks a non-zero WatchdogSec="
grep -qE '^RestrictAddressFamilies=.*AF_INET6' "$UNIT" || err "$UNIT must allow AF_INET6 (brokers over IPv6)"

# 4. sysusers + tmpfiles into an empty root
root="$work/root"
mkdir -p "$root/etc" "$root/var/lib"
if ! systemd-sysusers --root="$root" "$PWD/$SYSUSERS" >"$work/sysusers.log" 2>&1; then
  err "systemd-sysusers $SYSUSERS:"; cat "$work/sysusers.log" >&2
fi
grep -q '^robotd:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$root/etc/passwd" 2>/dev/null ||
  err "$SYSUSERS did not create a system user robotd with no login shell"
for g in gpio video audio; do
  grep -qE "^$g:x:[0-9]+:(.*,)?robotd(,|$)" "$root/etc/group" 2>/dev/null || err "$SYSUSERS: robotd not in group $g"
done
if ! systemd-tmpfiles --root="$root" --create "$PWD/$TMPFILES" >"$work/tmpfiles.log" 2>&1; then
  err "systemd-tmpfiles $TMPFILES:"; cat "$work/tmpfiles.log" >&2
fi
[ "$(stat -c %a "$root/var/lib/robotd" 2>/dev/null)" = 700 ] || err "$TMPFILES did not create /var/lib/robotd 0700"
[ "$fail" = 0 ] && echo "check-unit: sysusers + tmpfiles OK"

exit "$fail"
