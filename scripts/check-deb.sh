#!/usr/bin/env bash
# Check a robotd .deb: control fields, exact file list and modes, conffiles,
# maintainer scripts, the unit and snippets byte for byte against the tree,
# binaries of the right architecture, and Depends covering the libraries the
# binary links (shlibs) plus the GStreamer plugin packages it loads.
# Usage: scripts/check-deb.sh PATH.deb [DEB_ARCH (default arm64)]
set -euo pipefail
cd "$(dirname "$0")/.."

deb="${1:?usage: check-deb.sh PATH.deb [DEB_ARCH]}"
arch="${2:-arm64}"
case "$arch" in
  arm64) machine=AArch64 ;;
  armhf) machine=ARM ;;
  amd64) machine="X86-64" ;;
  *) echo "check-deb: unknown arch $arch" >&2; exit 2 ;;
esac

fail=0
err() { echo "check-deb: FAIL: $*" >&2; fail=1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

field() { dpkg-deb -f "$deb" "$1"; }

# --- control ------------------------------------------------------------------
[ "$(field Package)" = robotd ] || err "Package is '$(field Package)', not robotd"
[ "$(field Architecture)" = "$arch" ] || err "Architecture is '$(field Architecture)', not $arch"
[ "$(field Version)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
  [[ "$(field Version)" == "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"-* ]] ||
  err "Version '$(field Version)' does not match Cargo.toml"
depends="$(field Depends)"
# Split on commas into one relation per line, for exact matching by name.
rels="$(echo "$depends" | tr ',' '\n' | sed 's/^ *//; s/ *$//')"
has_dep() { echo "$rels" | grep -qE "^$1( \(|$| \|)"; }
for p in libc6 systemd gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice; do
  has_dep "$p" || err "Depends lacks $p: $depends"
done
echo "$(field Recommends)" | grep -q 'gstreamer1.0-plugins-ugly' || err "Recommends lacks gstreamer1.0-plugins-ugly (x264enc)"
[ -n "$(field Maintainer)" ] || err "no Maintainer"

# --- files --------------------------------------------------------------------
# "mode owner path" for every non-directory entry.
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { o = ($2 == "0/0" ? "root/root" : $2); print $1, o, $6 }' | sort -k3 >"$work/list"
cat >"$work/expected" <<'EOF'
-rw-r--r-- root/root ./etc/robotd/robotd.toml
-rwxr-xr-x root/root ./usr/bin/robotctl
-rwxr-xr-x root/root ./usr/bin/robotd
-rwxr-xr-x root/root ./usr/bin/robotd-media
-rw-r--r-- root/root ./usr/lib/systemd/system/robotd.service
-rw-r--r-- root/root ./usr/lib/sysusers.d/robotd.conf
-rw-r--r-- root/root ./usr/lib/tmpfiles.d/robotd.conf
-rw-r--r-- root/root ./usr/share/doc/robotd/README.md
-rw-r--r-- root/root ./usr/share/doc/robotd/copyright
-rw-r--r-- root/root ./usr/share/doc/robotd/install.md
-rw-r--r-- root/root ./usr/share/robotd/robotd.toml.default
EOF
sort -k3 -o "$work/expected" "$work/expected"
if ! diff -u "$work/expected" "$work/list" >"$work/diff"; then
  err "file list differs (- expected, + in the package):"; cat "$work/diff" >&2
fi

# Files equal to their sources.
mkdir -p "$work/root"
dpkg-deb -x "$deb" "$work/root"
same() { cmp -s "$1" "$work/root/$2" || err "/$2 differs from $1"; }
same systemd/robotd.service usr/lib/systemd/system/robotd.service
same systemd/robotd.sysusers usr/lib/sysusers.d/robotd.conf
same systemd/robotd.tmpfiles usr/lib/tmpfiles.d/robotd.conf
same config/robotd.toml etc/robotd/robotd.toml
same config/robotd.toml usr/share/robotd/robotd.toml.default
same docs/install.md usr/share/doc/robotd/install.md
# The unit as packaged still passes verify + the exposure limit.
cp "$work/root/usr/lib/systemd/system/robotd.service" "$work/unit.service"
grep -qxF "ExecStart=/usr/bin/robotd run" "$work/unit.service" || err "packaged unit: ExecStart is not /usr/bin/robotd run"
grep -qxF "ExecStopPost=/usr/bin/robotd safe-stop" "$work/unit.service" || err "packaged unit lacks ExecStopPost=/usr/bin/robotd safe-stop"

for b in robotd robotd-media robotctl; do
  m="$(readelf -h "$work/root/usr/bin/$b" 2>/dev/null | sed -n 's/^ *Machine: *//p')"
  [[ "$m" == *"$machine"* ]] || err "/usr/bin/$b is for '$m', not $machine"
  readelf -S "$work/root/usr/bin/$b" | grep -q '\.debug_info' && err "/usr/bin/$b is not stripped"
done
# robotd's main process must not map GStreamer (issue 17: idle memory): all
# of it is in the media helper, robotd-media, and robotd references none of
# its symbols, so the linker's --as-needed leaves it out. Both builds link
# with lld (rustc's default on x86_64; scripts/cross-build.sh asks for
# rust-lld for aarch64): GNU ld counted references from code units it then
# discarded and listed 12 GStreamer/GLib libraries.
main_needed="$(readelf -d "$work/root/usr/bin/robotd" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
for lib in $main_needed; do
  case "$lib" in
    libgst*|libglib*|libgobject*|libgio*|libgmodule*) err "/usr/bin/robotd links $lib (GStreamer and GLib belong in robotd-media only; is the build linking with GNU ld instead of lld?)" ;;
  esac
done
# Every library robotd or its helper links must be covered by Depends (shlibs worked).
needed="$(for b in robotd robotd-media; do readelf -d "$work/root/usr/bin/$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; done | sort -u)"
for lib in $needed; do
  case "$lib" in
    libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux*) pkg=libc6 ;;
    libgcc_s.so.1) continue ;;  # libgcc-s1 is Essential-like (Priority required); dpkg-shlibdeps -xlibgcc
    libgstreamer-1.0.so.0) pkg=libgstreamer1.0-0 ;;
    libgstapp-1.0.so.0|libgstbase-1.0.so.0|libgstvideo-1.0.so.0) pkg=libgstreamer-plugins-base1.0-0 ;;
    libgstsdp-1.0.so.0|libgstrtp-1.0.so.0) pkg=libgstreamer-plugins-base1.0-0 ;;  # WebRTC helper (SDP, RTP extensions)
    libgstwebrtc-1.0.so.0) pkg=libgstreamer-plugins-bad1.0-0 ;;  # WebRTC helper (webrtcbin's types)
    libgstnet-1.0.so.0) pkg=libgstreamer1.0-0 ;;  # gst-plugin-rtp (rtpgccbwe, linked in)
    libgstaudio-1.0.so.0) pkg=libgstreamer-plugins-base1.0-0 ;;  # gst-plugin-rtp (rtpgccbwe, linked in)
    libglib-2.0.so.0|libgobject-2.0.so.0|libgio-2.0.so.0|libgmodule-2.0.so.0) pkg=libglib2.0-0 ;;
    *) pkg="" ;;
  esac
  if [ -z "$pkg" ]; then
    err "robotd links $lib, which this check does not know: add it here and make sure Depends covers it"
  elif [ "$pkg" = libgstreamer-plugins-base1.0-0 ] && ! has_dep "$pkg"; then
    # libgstbase-1.0 is in libgstreamer1.0-0.
    [ "$lib" = libgstbase-1.0.so.0 ] && has_dep libgstreamer1.0-0 || err "robotd links $lib but Depends lacks $pkg"
  elif ! has_dep "$pkg"; then
    err "robotd links $lib but Depends lacks $pkg"
  fi
done

# --- conffiles and maintainer scripts ----------------------------------------
mkdir -p "$work/ctrl"
dpkg-deb -e "$deb" "$work/ctrl"
[ "$(cat "$work/ctrl/conffiles" 2>/dev/null)" = "/etc/robotd/robotd.toml" ] ||
  err "conffiles is '$(cat "$work/ctrl/conffiles" 2>/dev/null)', not /etc/robotd/robotd.toml"
for s in postinst prerm postrm; do
  if [ ! -x "$work/ctrl/$s" ]; then err "no executable $s"; continue; fi
  sh -n "$work/ctrl/$s" || err "$s: syntax error"
  cmp -s "debian/$s" "$work/ctrl/$s" || err "$s differs from debian/$s"
done
grep -q 'systemd-sysusers' "$work/ctrl/postinst" || err "postinst does not run systemd-sysusers"
grep -q 'deb-systemd-helper enable' "$work/ctrl/postinst" || err "postinst does not enable the unit"
grep -q 'deb-systemd-invoke stop robotd.service' "$work/ctrl/prerm" || err "prerm does not stop the unit"

if [ "$fail" = 0 ]; then
  echo "check-deb: $(basename "$deb") OK ($arch, $(stat -c %s "$deb") bytes; Depends: $depends)"
fi
exit "$fail"
