#!/usr/bin/env bash
# The demo: the robot on this machine (simulated motors, the simulated camera view, the
# example flat of config/flat.toml), a local Mosquitto, and a scripted phone
# session (`robotctl demo`) that pairs, calls, drives, goes to the kitchen,
# tries the shut bedroom, records, hangs up and prints a timeline.
#
# Then it builds the phone web app (web/), serves it on 127.0.0.1 and prints a
# link that opens it with a fresh pairing URI filled in: pair, call and drive
# the simulated robot from your own browser.
#
#   scripts/run-local.sh          # demo, then leave the robot and the app running for you (Ctrl-C stops them)
#   scripts/run-local.sh --once   # demo, then stop; exit status is the demo's
#
# Environment:
#   ROBOTD_DEMO_PORT  broker port on 127.0.0.1 (default 18830); its WebSockets
#                     listener (for the web app) is the next port up
#   ROBOTD_WEB_PORT   the web app's port on 127.0.0.1 (default 18080)
#   ROBOTD_DEMO_DIR   run directory: config, state, socket, logs, demo output
#                     (default $XDG_RUNTIME_DIR/robotd-demo, else /tmp/robotd-demo)
#   ROBOTD_BIN_DIR    use robotd, robotd-media and robotctl from this directory instead of
#                     building them (cargo build --release)
# Everything listens on and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-local.sh: unknown argument $arg (try --once or --help)" >&2; exit 2 ;;
  esac
done

port="${ROBOTD_DEMO_PORT:-18830}"
wsport=$((port + 1))
webport="${ROBOTD_WEB_PORT:-18080}"
run="${ROBOTD_DEMO_DIR:-${XDG_RUNTIME_DIR:-/tmp}/robotd-demo}"
case "$port" in '' | *[!0-9]*) echo "run-local.sh: ROBOTD_DEMO_PORT=$port is not a port number" >&2; exit 2 ;; esac
case "$webport" in '' | *[!0-9]*) echo "run-local.sh: ROBOTD_WEB_PORT=$webport is not a port number" >&2; exit 2 ;; esac
case "$run" in /*) ;; *) run="$PWD/$run" ;; esac
case "$run" in *[\"\\\|]*) echo "run-local.sh: ROBOTD_DEMO_DIR must not contain \", \\ or |" >&2; exit 2 ;; esac

bash scripts/setup.sh
if [ -n "${ROBOTD_BIN_DIR:-}" ]; then
  bin="$ROBOTD_BIN_DIR"
else
  cargo build --release --locked --bins
  bin="$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)/release"
fi
for b in robotd robotd-media robotctl; do
  [ -x "$bin/$b" ] || { echo "run-local.sh: $bin/$b is missing" >&2; exit 1; }
done

# A fresh robot each run: new state (ID, owners, place), new logs.
mkdir -p "$run"
rm -rf "$run/state" "$run/demo" "$run"/*.log "$run/control.sock"
conf="$run/robotd.toml"
# config/flat.toml with this run's broker port, state directory and socket.
sed -e "s|^url = \"mqtt://127\.0\.0\.1:[0-9]*\"|url = \"mqtt://127.0.0.1:$port\"|" \
    -e "s|^state_dir = .*|state_dir = \"$run/state\"|" \
    -e "s|^socket = .*|socket = \"$run/control.sock\"|" \
    config/flat.toml > "$conf"
effective="$("$bin/robotd" -c "$conf" check-config)"
for want in "mqtt://127.0.0.1:$port" "$run/state" "$run/control.sock"; do
  grep -qF "\"$want\"" <<<"$effective" || { echo "run-local.sh: $conf does not use $want" >&2; exit 1; }
done

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$wsport"; do
  if listening "$p"; then
    echo "run-local.sh: something already listens on 127.0.0.1:$p; set ROBOTD_DEMO_PORT to a free pair of ports" >&2
    exit 1
  fi
done

broker="" robotd="" web=""
stop_all() {
  if [ -n "$web" ]; then
    kill -TERM "$web" 2>/dev/null || true
    wait "$web" 2>/dev/null || true
  fi
  # SIGTERM: robotd ends any call, stops the motors and publishes offline.
  if [ -n "$robotd" ] && kill -0 "$robotd" 2>/dev/null; then
    kill -TERM "$robotd" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$robotd" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$robotd" 2>/dev/null || true
  fi
  [ -z "$robotd" ] || wait "$robotd" 2>/dev/null || true
  if [ -n "$broker" ]; then
    kill -TERM "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
  fi
  robotd="" broker="" web=""
}
trap stop_all EXIT
trap 'echo; echo "stopping robotd and the broker"; exit 130' INT
trap 'exit 143' TERM

cat > "$run/mosquitto.conf" <<CONF
allow_anonymous true
persistence false
log_dest stderr
listener $port 127.0.0.1
listener $wsport 127.0.0.1
protocol websockets
CONF
# (stderr rather than log_dest file: run as root, mosquitto drops to its own
# user, which may not write here.)
mosquitto -c "$run/mosquitto.conf" 2>"$run/mosquitto.log" &
broker=$!
for _ in $(seq 100); do listening "$port" && break; sleep 0.1; done
listening "$port" || { echo "run-local.sh: mosquitto did not start; see $run/mosquitto.log" >&2; exit 1; }

# robotd logs to a file so the timeline stays readable.
start_robotd() {
  env -u NOTIFY_SOCKET -u JOURNAL_STREAM NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" \
    "$bin/robotd" -c "$conf" 2>>"$run/robotd.log" &
  robotd=$!
  for _ in $(seq 300); do
    kill -0 "$robotd" 2>/dev/null || { echo "run-local.sh: robotd exited; see $run/robotd.log" >&2; tail -n 20 "$run/robotd.log" >&2; exit 1; }
    "$bin/robotd" -c "$conf" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "run-local.sh: robotd's admin socket $run/control.sock did not answer; see $run/robotd.log" >&2
  exit 1
}
stop_robotd() {
  kill -TERM "$robotd" 2>/dev/null || true
  wait "$robotd" 2>/dev/null || true
  robotd=""
}
start_robotd
echo "robotd is running (pid $robotd, broker mqtt://127.0.0.1:$port, logs in $run)"
echo

status=0
"$bin/robotctl" demo --config "$conf" --out "$run/demo" || status=$?

# The phone web app, built for this broker's WebSockets listener and served
# on 127.0.0.1 only (a secure context for the browser: camera, WebCrypto).
serve_web() {
  [ -f web/package-lock.json ] || { echo "run-local.sh: web/ has no package-lock.json" >&2; exit 1; }
  rm -rf "$run/web"
  if ! (cd web && ROBOTD_BROKER_WS="ws://127.0.0.1:$wsport" ROBOTD_WEB_OUTDIR="$run/web" npm run --silent build) \
      >"$run/web-build.log" 2>&1; then
    echo "run-local.sh: building the web app failed; see $run/web-build.log" >&2
    tail -n 20 "$run/web-build.log" >&2
    exit 1
  fi
  if listening "$webport"; then
    echo "run-local.sh: something already listens on 127.0.0.1:$webport; set ROBOTD_WEB_PORT to a free port" >&2
    exit 1
  fi
  python3 -m http.server --bind 127.0.0.1 "$webport" --directory "$run/web" >"$run/web.log" 2>&1 &
  web=$!
  for _ in $(seq 100); do listening "$webport" && break; sleep 0.1; done
  python3 -c 'import sys, urllib.request; sys.exit(0 if b"<html" in urllib.request.urlopen(sys.argv[1], timeout=5).read().lower() else 1)' \
    "http://127.0.0.1:$webport/index.html" || { echo "run-local.sh: the web app is not served; see $run/web.log" >&2; exit 1; }
  # A new pairing window for the browser (Alice from the demo stays an owner).
  local uri
  uri="$("$bin/robotd" -c "$conf" pair | grep -o 'robotd://pair?[^"'"'"' ]*' | head -n 1)"
  [ -n "$uri" ] || { echo "run-local.sh: robotd pair printed no pairing URI" >&2; exit 1; }
  weblink="http://127.0.0.1:$webport/#pair=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$uri")"
}

if [ "$once" = 1 ]; then
  [ "$status" = 0 ] || exit "$status"
  serve_web
  echo "web app: served on http://127.0.0.1:$webport/ (pairing link: $weblink)"
  exit 0
fi

# The shut door left the robot in the corridor, its place unknown. A restart
# puts the simulated robot back on its dock (the owners stay); say so.
stop_robotd
start_robotd
"$bin/robotd" -c "$conf" at home >/dev/null
serve_web

k="--keys $run/demo/keys.json"
cat <<MSG

The phone web app is served on http://127.0.0.1:$webport/ . Open this link in a
browser on this machine to pair it with the robot (the pairing window is open
for 10 minutes; \`$bin/robotd -c $conf pair\` opens a new one), then call it,
drive it with the joystick and send it to the kitchen:
  $weblink

robotd was restarted (pid $robotd): the simulated robot is back on its dock and
Alice is still its owner. Try it yourself from another terminal:
  $bin/robotctl $k call -x 'goto kitchen' -x 'wait 15' -x 'goto home' -x 'wait 20'
  $bin/robotctl $k call --frames 30 -x 'drive 0.5 0 800' -x 'wait 2' -x ping --snapshot frame.png
  $bin/robotctl $k call --record call.mkv     # commands from standard input; hangup ends it
  $bin/robotd -c $conf status      # JSON, with the simulated pose
A manual drive (or a shut door) leaves the robot's place unknown, and goto is
refused until you tell it where it is ($bin/robotd -c $conf at PLACE)
or run this script again for a fresh robot.
Pair another phone (its own keys file):
  $bin/robotd -c $conf pair        # QR code + URI
  $bin/robotctl --keys bob.json pair '<URI>' --phone '+48 555 555 556' --nickname Bob
Press Ctrl-C to stop robotd, the broker and the web app.
MSG
wait "$robotd" || true
robotd=""
echo "robotd exited; see $run/robotd.log"
