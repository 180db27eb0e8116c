#!/usr/bin/env bash
# Run the robot on this machine: simulated motors, test video, a local
# Mosquitto on 127.0.0.1:18830. Installs what it needs (idempotently), builds,
# then runs robotd in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bins
bin="$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)/release"

run=/tmp/robotd-local
mkdir -p "$run"
port=18830
cat > "$run/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
log_dest file $run/mosquitto.log
CONF
mosquitto -c "$run/mosquitto.conf" &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

cat <<MSG
robotd is starting (config config/local.toml, broker mqtt://127.0.0.1:$port).
In another terminal:
  $bin/robotd -c config/local.toml pair            # shows the pairing QR and URI
  $bin/robotctl pair '<URI>' --phone '+48 555 555 555'
  $bin/robotctl call --frames 30 -x 'drive 0.5 0 800' -x 'wait 2' -x ping
  $bin/robotd -c config/local.toml status
MSG
exec $bin/robotd -c config/local.toml
