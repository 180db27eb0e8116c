#!/usr/bin/env bash
# Install the Debian packages robotd needs to build, test and run here.
# Idempotent: packages already installed are not touched, and apt is only
# called when something is missing. Works as root or through sudo.
# Then the web app's npm packages (web/package-lock.json, `npm ci`), again
# only when web/node_modules does not match the lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # build
  pkg-config libclang-dev clang
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  # run: the broker for the local demo and the tests, and GStreamer plugins
  # (videotestsrc/videoconvert: base; rtp/udp/v4l2: good; srtp + openh264: bad;
  # x264enc: ugly; avdec_h264: libav)
  mosquitto mosquitto-clients
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-alsa
  # WebRTC: libnice for webrtcbin's ICE
  gstreamer1.0-nice
  # checks: systemd-analyze for the unit; python3 recomputes the protocol vectors
  systemd python3
  # the small internet of the WebRTC tests: network namespaces, nftables NAT,
  # coturn as STUN/TURN; libfaketime for the clock-step tests
  iproute2 nftables coturn faketime
  # the phone web app's end-to-end tests: Debian's browser, driven by
  # playwright-core (no browser download)
  chromium
)
# Node.js and npm build the web app (web/). A machine that already has a
# node (e.g. from NodeSource) keeps it; otherwise Debian's.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi
PACKAGES+=("$@")

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

web_packages() {
  # The web app's packages, exactly as web/package-lock.json pins them;
  # skipped when node_modules already matches the lockfile.
  [ -f web/package-lock.json ] || return 0
  local need have
  need="$(sed -n 's/.*"node": *">=\([0-9]*\).*/\1/p' web/package.json | head -n 1)"
  have="$(node -p 'process.versions.node.split(".")[0]')"
  if [ -n "$need" ] && [ "$have" -lt "$need" ]; then
    echo "setup: the web app needs Node.js >= $need (web/package.json engines), this machine has $(node --version)." >&2
    echo "setup: install a newer nodejs (Debian 13 has 20; or NodeSource's packages) and run this again." >&2
    exit 1
  fi
  local stamp=web/node_modules/.robotd-lock.sha256
  if [ -f "$stamp" ] && sha256sum --status -c "$stamp" 2>/dev/null; then
    return 0
  fi
  echo "setup: npm ci in web/" >&2
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
  sha256sum web/package-lock.json web/package.json > "$stamp"
}

if [ ${#missing[@]} -eq 0 ]; then
  web_packages
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package enables and starts a system-wide mosquitto on :1883; the
# tests start their own brokers on free ports and do not need it.
web_packages
