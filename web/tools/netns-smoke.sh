#!/usr/bin/env bash
# A manual end-to-end smoke run of the web app (not the lead's test harness): Mosquitto (MQTT +
# WebSockets), robotd on the simulated robot (config/flat.toml) and Chromium driven by
# playwright-core, all inside a throw-away network namespace whose only interfaces are lo and a
# veth pair (so WebRTC's ICE sees nothing else). Needs root, mosquitto, chromium, robotd.
#
#   ROBOTD_BIN_DIR=/path/to/target/debug web/tools/netns-smoke.sh
#
# It builds the app into the run directory, runs web/tools/smoke.mjs, prints ok/FAIL per step and
# removes the namespace. Exit status 1 if any step failed. SMOKE_MIC=1 also calls with Chromium's
# fake microphone and checks push-to-talk against robotd's test speaker ([audio] speaker = "test").
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${ROBOTD_BIN_DIR:?set ROBOTD_BIN_DIR to the directory holding robotd}"
run="$(mktemp -d /tmp/robotd-web-smoke.XXXXXX)"
ns="robotd-web-$$"
mqtt=18931 ws=19931 http=18932
pids=()
cleanup() {
  # the broker the smoke restarted is not a child of this script: its pid is in mosq.pid
  [ -s "$run/mosq.pid" ] && pids+=("$(cat "$run/mosq.pid")")
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
NS=(ip netns exec "$ns")
"${NS[@]}" ip link set lo up
"${NS[@]}" ip link add va type veth peer name vb
"${NS[@]}" ip addr add 10.99.0.1/24 dev va
"${NS[@]}" ip addr add 10.99.0.2/24 dev vb
"${NS[@]}" ip link set va up
"${NS[@]}" ip link set vb up

(cd web && ROBOTD_BROKER_WS="ws://127.0.0.1:$ws" ROBOTD_WEB_OUTDIR="$run/dist" npm run build >"$run/build.log" 2>&1)
cat >"$run/mosquitto.conf" <<CONF
listener $mqtt 127.0.0.1
listener $ws 127.0.0.1
protocol websockets
allow_anonymous true
log_dest stderr
CONF
sed -e "s|^url = \"mqtt://127\.0\.0\.1:[0-9]*\"|url = \"mqtt://127.0.0.1:$mqtt\"|" \
    -e "s|^state_dir = .*|state_dir = \"$run/state\"|" \
    -e "s|^socket = .*|socket = \"$run/control.sock\"|" config/flat.toml >"$run/robotd.toml"
# SMOKE_MIC=1: the robot measures the phone's audio (a robotd with [audio] speaker support)
[ -z "${SMOKE_MIC:-}" ] || printf '\n[audio]\nspeaker = "test"\n' >>"$run/robotd.toml"
"${NS[@]}" mosquitto -c "$run/mosquitto.conf" 2>"$run/mosquitto.log" </dev/null >/dev/null &
echo $! >"$run/mosq.pid"
pids+=($!)
"${NS[@]}" python3 -m http.server "$http" --bind 0.0.0.0 --directory "$run/dist" >"$run/http.log" 2>&1 </dev/null &
pids+=($!)
sleep 1
"${NS[@]}" "$bin/robotd" -c "$run/robotd.toml" 2>"$run/robotd.log" </dev/null >/dev/null &
pids+=($!)
for _ in $(seq 100); do grep -q 'robotd://pair' "$run/robotd.log" 2>/dev/null && break; sleep 0.1; done
sed 's/\x1b\[[0-9;]*m//g' "$run/robotd.log" | grep -o 'robotd://pair[^ "]*' | head -1 >"$run/uri"
[ -s "$run/uri" ] || { echo "robotd opened no pairing window; see $run/robotd.log" >&2; exit 1; }
SMOKE_RUN="$run" SMOKE_APP="http://127.0.0.1:$http/" SMOKE_ROBOTD="$bin/robotd -c $run/robotd.toml" \
  "${NS[@]}" node web/tools/smoke.mjs
