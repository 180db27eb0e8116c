#!/usr/bin/env bash
# Install the Debian packages robotd needs to build, test and run here.
# Idempotent: packages already installed are not touched, and apt is only
# called when something is missing. Works as root or through sudo.
set -euo pipefail

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
)
PACKAGES+=("$@")

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
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
